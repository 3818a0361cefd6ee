"""Hugging Face sequence classifiers from a local folder (`--model hf:DIR`, written by `save_pretrained`).

Loaded offline (`local_files_only=True`: nothing is fetched) with transformers'
AutoModelForSequenceClassification and wrapped so that forward() takes the token tensors by name and
returns the `.logits` tensor the pipeline measures. The wrapper's forward names the inputs the
architecture takes, in the order tokenizers emit them: input_ids, attention_mask, and token_type_ids
when the model has token type embeddings (BERT; not DistilBERT). Pruned copies are saved as the
pipeline saves every factory model: state_dict + every layer's shape attributes (the attention modules'
num_attention_heads / attention_head_size / all_head_size included), rebuilt onto a fresh load of DIR,
plus ONNX and .pt2. Not as `save_pretrained`: after global pruning each layer keeps its own head count
and FFN width, which a transformers config (one size for all layers) cannot describe.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.errors import UserError


class _Base(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    def _logits(self, **kw) -> torch.Tensor:
        return self.model(**kw, return_dict=True).logits


class TextClassifier(_Base):
    """input_ids, attention_mask -> logits."""

    def forward(self, input_ids, attention_mask):
        return self._logits(input_ids=input_ids, attention_mask=attention_mask)


class TextClassifierWithTypes(_Base):
    """input_ids, attention_mask, token_type_ids (optional) -> logits."""

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self._logits(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def from_pretrained(path: str) -> nn.Module:
    """The classifier saved in `path`, in eval mode, with eager attention (a plain graph to export)."""
    d = Path(path)
    if not (d / "config.json").is_file():
        raise UserError(f"hf:{path} is not a save_pretrained folder (no config.json)",
                        "pass the folder written by model.save_pretrained(DIR)")
    from pipeline.models.zoo import import_torchvision
    import_torchvision()      # transformers imports torchvision when present: its CUDA wheel needs the op schemas
    try:
        from transformers import AutoModelForSequenceClassification
    except ImportError as e:
        raise UserError(f"transformers is not installed ({e})", "pip install -r requirements.txt") from None
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(d), local_files_only=True,
                                                                   attn_implementation="eager")
    except Exception as e:  # noqa: BLE001 -- transformers raises many types for an unreadable folder
        raise UserError(f"transformers cannot load hf:{path} as a sequence classifier: "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                        "save a *ForSequenceClassification model with save_pretrained") from None
    model.config.return_dict = True
    types = any(n.endswith("token_type_embeddings") for n, _ in model.named_modules())
    return (TextClassifierWithTypes if types else TextClassifier)(model.eval()).eval()
