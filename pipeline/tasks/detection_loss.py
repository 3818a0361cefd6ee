"""Detection losses on the exported layout (N, 4 + C, A): boxes cx, cy, w, h in input pixels, then per-class
probabilities, one column per anchor point.

- `gt_loss`: YOLOv8's recipe without its DFL term (the raw bin logits are not in the exported layout):
  a task-aligned assigner (TOOD) picks, per ground-truth box, the top-k anchors inside it by
  score^0.5 * IoU^6; classes learn soft IoU-aware targets by binary cross-entropy, boxes by GIoU.
  Used to train the bundled teacher and as the ground-truth term of distillation.
- `kd_loss`: the student's outputs against the teacher's: class probabilities at temperature T (binary
  KL per class), boxes by GIoU and L1 in stride units, weighted by the teacher's confidence per anchor.

Anchor points come from `anchor_points` (the cell centres of each stride's grid, finest first).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-7


def anchor_points(height: int, width: int, strides) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, 2) cell centres x, y in pixels and (A,) their strides, level by level, row-major."""
    pts, st = [], []
    for s in strides:
        h, w = -(-height // s), -(-width // s)
        gy, gx = torch.meshgrid((torch.arange(h) + 0.5) * s, (torch.arange(w) + 0.5) * s, indexing="ij")
        pts.append(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1))
        st.append(torch.full((h * w,), float(s)))
    return torch.cat(pts).float(), torch.cat(st)


def xyxy(cxcywh: torch.Tensor) -> torch.Tensor:
    c, wh = cxcywh[..., :2], cxcywh[..., 2:4]
    return torch.cat([c - wh / 2, c + wh / 2], -1)


def box_iou(a: torch.Tensor, b: torch.Tensor, giou: bool = False) -> torch.Tensor:
    """Elementwise IoU (or GIoU) of xyxy boxes broadcast against each other (..., 4)."""
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a + area_b - inter + EPS
    iou = inter / union
    if not giou:
        return iou
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1) + EPS
    return iou - (hull - union) / hull


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.logit(p.clamp(1e-6, 1 - 1e-6))


@torch.no_grad()
def assign(scores: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor, gt: torch.Tensor,
           topk: int = 10, alpha: float = 0.5, beta: float = 6.0):
    """Task-aligned assignment. scores (N, A, C) probabilities, boxes (N, A, 4) xyxy, points (A, 2),
    gt (N, M, 5) [class, x1, y1, x2, y2] with class -1 padding. Returns target boxes (N, A, 4), target
    scores (N, A, C) and the foreground mask (N, A)."""
    n, a, c = scores.shape
    valid = gt[..., 0] >= 0                                               # (N, M)
    labels = gt[..., 0].clamp(min=0).long()
    gboxes = gt[..., 1:5]
    inside = ((points[None, None] > gboxes[:, :, None, :2]).all(-1)
              & (points[None, None] < gboxes[:, :, None, 2:]).all(-1)) & valid[..., None]  # (N, M, A)
    iou = box_iou(gboxes[:, :, None], boxes[:, None]).clamp(min=0) * inside
    cls_score = scores.gather(2, labels[:, None, :].expand(n, a, -1)).transpose(1, 2)  # (N, M, A)
    align = cls_score.pow(alpha) * iou.pow(beta) * inside
    k = min(topk, a)
    top = align.topk(k, dim=-1).indices
    mask = torch.zeros_like(align, dtype=torch.bool).scatter_(-1, top, True) & inside & (align > 0)
    # an anchor claimed by several boxes goes to the one it overlaps most
    multi = mask.sum(1, keepdim=True) > 1
    best = F.one_hot(iou.argmax(1), gt.shape[1]).transpose(1, 2).bool()
    mask = torch.where(multi, best & inside, mask)
    fg = mask.any(1)                                                      # (N, A)
    idx = mask.float().argmax(1)                                          # (N, A)
    t_boxes = gboxes.gather(1, idx[..., None].expand(-1, -1, 4))
    t_labels = labels.gather(1, idx)
    align = align * mask
    norm = (align * (iou * mask).amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + EPS)).amax(1)  # (N, A)
    t_scores = F.one_hot(t_labels, c).float() * (norm * fg)[..., None]
    return t_boxes, t_scores, fg


def gt_loss(pred: torch.Tensor, gt: torch.Tensor, points: torch.Tensor, box_gain: float = 7.5,
            cls_gain: float = 0.5) -> torch.Tensor:
    """Ground-truth detection loss of outputs `pred` (N, 4 + C, A) against boxes `gt` (N, M, 5)."""
    p = pred.transpose(1, 2)                                              # (N, A, 4 + C)
    boxes, scores = xyxy(p[..., :4]), p[..., 4:]
    t_boxes, t_scores, fg = assign(scores.detach(), boxes.detach(), points.to(p.device), gt.to(p.device))
    norm = t_scores.sum().clamp(min=1.0)
    cls = F.binary_cross_entropy_with_logits(_logit(scores), t_scores, reduction="sum") / norm
    if fg.any():
        w = t_scores.sum(-1)[fg]
        box = ((1 - box_iou(boxes[fg], t_boxes[fg], giou=True)) * w).sum() / norm
    else:
        box = boxes.sum() * 0
    return box_gain * box + cls_gain * cls


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, strides: torch.Tensor, temperature: float = 2.0,
            box_gain: float = 2.0) -> torch.Tensor:
    """Student outputs against the teacher's (both (N, 4 + C, A)): class probabilities softened at
    `temperature` (binary KL per class and anchor, times T^2), boxes by GIoU + L1 in stride units,
    weighted by the teacher's top class probability at each anchor."""
    t = temperature
    zs, zt = _logit(student[:, 4:]), _logit(teacher[:, 4:])
    soft = F.binary_cross_entropy_with_logits(zs / t, torch.sigmoid(zt / t), reduction="none") \
        - F.binary_cross_entropy_with_logits(zt / t, torch.sigmoid(zt / t), reduction="none")
    cls = soft.sum(1).mean() * t * t
    w = teacher[:, 4:].amax(1)                                            # (N, A)
    sb, tb = xyxy(student[:, :4].transpose(1, 2)), xyxy(teacher[:, :4].transpose(1, 2))
    giou = 1 - box_iou(sb, tb, giou=True)
    l1 = (sb - tb).abs().sum(-1) / strides.to(student.device)
    box = ((giou + 0.25 * l1) * w).sum() / w.sum().clamp(min=EPS)
    return cls + box_gain * box
