"""Which of a model's coupled channel groups torch-pruning can prune, so that one group it cannot follow
(channel shuffle, a custom op, an unsupported reshape, a fixed-size buffer) is left unpruned instead of
sinking the whole model.

A group is the set of layers whose channels torch-pruning removes together (a conv, its BatchNorm, the
convs reading it, the residual adds tying them). Each is named by its root module and its members.
`isolate` first prunes all groups at once (one try: the common case costs nothing more); when that
fails, it bisects the groups, each try pruning only a subset on a fresh copy, and excludes the groups
whose pruning fails or breaks the model (it must run and keep its output shape), then checks the rest
together again. Failures that need two groups together are found by adding groups one at a time.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from torch import nn

# A channel group this large has not closed: torch-pruning keeps revisiting layers with shifted indices
# (a reshape it misreads, e.g. a channel shuffle between split and concat) and would run for hours.
# The largest real groups of the torchvision zoo hold about a hundred (DenseNet-121: 102).
MAX_GROUP_DEPS = 1000
# A try prunes the given groups (and none of the others) and answers None or the reason it failed.
Probe = Callable[[list["Group"]], Optional[str]]


@dataclass(frozen=True)
class Group:
    root: str                  # the module named in prune.ignore to leave the group alone
    members: tuple[str, ...]   # every module whose output channels the group removes

    def record(self, reason: str) -> dict:
        return {"root": self.root, "modules": list(self.members), "reason": reason}


@contextlib.contextmanager
def tolerant_index_mapping() -> Iterator[dict]:
    """While active, a node whose channel index mapping torch-pruning cannot work out (a reshape it
    misreads, e.g. a channel shuffle: ZeroDivisionError or IndexError in its index_mapping) is recorded
    in the yielded dict ("nodes": node -> reason) instead of failing the whole dependency graph, and so
    is a root module whose group cannot be built ("roots": module -> reason). The groups through such a
    node must then be left unpruned (see `groups_of`): their indices past it would be wrong."""
    from torch_pruning.dependency import index_mapping as im
    from torch_pruning.dependency.graph import DependencyGraph
    from torch_pruning.dependency.group import Group as TPGroup
    failed: dict = {"nodes": {}, "roots": {}}
    saved = {n: getattr(im, n) for n in dir(im)
             if n.startswith("update_") and n.endswith("_index_mapping") and n != "update_index_mapping"}

    def tolerant(f):
        def update(graph, node):
            try:
                return f(graph, node)
            except Exception as e:  # noqa: BLE001 -- recorded; the groups through the node are excluded
                failed["nodes"][node] = f"{e.__class__.__name__}: {(str(e).splitlines() or [''])[0][:120]}"
        return update

    def all_groups(self, ignored_layers=(), root_module_types=()):
        """DependencyGraph.get_all_groups (torch-pruning 1.6), going on past a root whose group it
        cannot build (recorded under the root module)."""
        visited, ignored = set(), list(ignored_layers) + list(self.IGNORED_LAYERS_IN_TRACING)
        for m in list(self.module2node.keys()):
            if m in ignored or not isinstance(m, tuple(root_module_types)) or m in visited:
                continue
            pruner = self.get_pruner_of_module(m)
            if pruner is None or pruner.get_out_channels(m) is None:
                continue
            try:
                group = self.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
            except Exception as e:  # noqa: BLE001 -- recorded; the group is excluded
                failed["roots"][m] = f"{e.__class__.__name__}: {(str(e).splitlines() or [''])[0][:120]}"
                continue
            prunable = True
            for dep, _ in group:
                if self.is_out_channel_pruning_fn(dep.handler):
                    visited.add(dep.target.module)
                    prunable = prunable and dep.target.module not in ignored
            if prunable:
                yield group

    original_all_groups, original_add_dep = DependencyGraph.get_all_groups, TPGroup.add_dep

    def bounded_add_dep(self, dep, idxs):
        if len(self._group) >= MAX_GROUP_DEPS:
            raise RuntimeError(f"the channel group does not close (over {MAX_GROUP_DEPS} dependencies): "
                               "torch-pruning cannot map its channel indices (a channel shuffle or similar reshape)")
        return original_add_dep(self, dep, idxs)

    for n, f in saved.items():
        setattr(im, n, tolerant(f))
    DependencyGraph.get_all_groups, TPGroup.add_dep = all_groups, bounded_add_dep
    try:
        yield failed
    finally:
        for n, f in saved.items():
            setattr(im, n, f)
        DependencyGraph.get_all_groups, TPGroup.add_dep = original_all_groups, original_add_dep


def groups_of(dg, ignored: list[nn.Module], model: nn.Module, failed: dict) -> tuple[list[Group], dict[Group, str]]:
    """The prunable groups of a torch-pruning pruner built on `model`, named by module, and those of
    them that pass through a node in `failed` or could not be built (see tolerant_index_mapping), with
    the reason. `dg`: torch-pruning's DependencyGraph of `model`; `ignored`: modules never pruned."""
    import torch_pruning as tp
    names = {id(m): n for n, m in model.named_modules()}
    out, blocked = [], {}
    ignored = [sub for m in ignored for sub in m.modules()]      # as torch-pruning's pruner expands them
    for group in dg.get_all_groups(ignored_layers=ignored,
                                   root_module_types=[tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM]):
        members, bad = [], None
        for dep, _ in group:
            n = names.get(id(dep.target.module))
            if n and dg.is_out_channel_pruning_fn(dep.handler) and n not in members:
                members.append(n)
            for node in (dep.source, dep.target):
                if node in failed["nodes"] and bad is None:
                    bad = f"torch-pruning cannot map channel indices through {node.name}: {failed['nodes'][node]}"
        root = names.get(id(group[0][0].target.module))
        if root:
            g = Group(root, tuple(members))
            out.append(g)
            if bad:
                blocked[g] = bad
    for module, why in failed["roots"].items():      # roots whose group could not even be built
        root = names.get(id(module))
        if root and not any(root in g.members for g in out):
            g = Group(root, (root,))
            out.append(g)
            blocked[g] = f"torch-pruning cannot build the channel group of {root}: {why}"
    return out, blocked


def isolate(groups: list[Group], probe: Probe, max_tries: int = 400) -> list[dict]:
    """The groups to exclude (records with root, members and reason) so that the others prune together."""
    reason = probe(groups)
    if reason is None:
        return []
    tries = [1]
    excluded: dict[Group, str] = {}

    def attempt(subset: list[Group]) -> Optional[str]:
        tries[0] += 1
        if tries[0] > max_tries:
            raise RuntimeError(f"gave up isolating the failing channel groups after {max_tries} tries")
        return probe(subset)

    def one_by_one(accepted: list[Group], rest: list[Group]) -> list[Group]:
        for g in rest:
            r = attempt(accepted + [g])
            if r is None:
                accepted = accepted + [g]
            else:
                excluded[g] = r
        return accepted

    def bisect(cands: list[Group], why: str) -> None:
        """`cands` fail together (with `why`): find the members that fail."""
        if len(cands) == 1:
            excluded[cands[0]] = why
            return
        left, right = cands[:len(cands) // 2], cands[len(cands) // 2:]
        r_left, r_right = attempt(left), attempt(right)
        if r_left is not None:
            bisect(left, r_left)
        if r_right is not None:
            bisect(right, r_right)
        if r_left is None and r_right is None:       # each half prunes alone, not together
            one_by_one(left, right)

    bisect(groups, reason)
    kept = [g for g in groups if g not in excluded]
    if kept and attempt(kept) is not None:           # survivors that fail only in company
        one_by_one([], kept)
    return [g.record(excluded[g]) for g in groups if g in excluded]
