"""How different the seeds of one class are: mean pairwise distance of their activation paths."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from .similarity import Path


def seed_distance(path: Path, class_ids: Sequence[int] | Tensor) -> dict[int, float]:
    """Per class with at least two rows: the mean over pairs of rows of (1 - cosine similarity) of
    their pooled activations, averaged over the path's layers (0: identical seeds, up to 2)."""
    ids = torch.as_tensor(list(class_ids) if not isinstance(class_ids, Tensor) else class_ids).long().cpu()
    out: dict[int, float] = {}
    for c in ids.unique().tolist():
        rows = (ids == c).nonzero().flatten()
        if len(rows) < 2:
            continue
        per_layer = []
        for t in path.values():
            x = t[rows].double().reshape(len(rows), -1)
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
            sim = x @ x.T
            pairs = torch.triu_indices(len(rows), len(rows), 1)
            per_layer.append((1 - sim[pairs[0], pairs[1]]).mean())
        out[int(c)] = float(torch.stack(per_layer).mean())
    return out


class SeedDiversity(Metric):
    """torchmetrics wrapper of :func:`seed_distance`: ``update(path, class_ids)``, ``compute()`` -> mean
    over classes of the per-class seed distance (rows of all processes gathered first)."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, layer_names: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layer_names = tuple(layer_names)
        for name in self.layer_names:
            self.add_state(f"act_{name}", default=[], dist_reduce_fx="cat")
        self.add_state("class_ids", default=[], dist_reduce_fx="cat")

    def update(self, path: Path, class_ids: Tensor) -> None:
        for name in self.layer_names:
            getattr(self, f"act_{name}").append(path[name].double())
        self.class_ids.append(torch.as_tensor(class_ids).double())

    def per_class(self) -> dict[int, float]:
        path = {n: dim_zero_cat(getattr(self, f"act_{n}")) for n in self.layer_names}
        return seed_distance(path, dim_zero_cat(self.class_ids).long())

    def compute(self) -> Tensor:
        values = list(self.per_class().values())
        return torch.tensor(sum(values) / len(values) if values else float("nan"), dtype=torch.float64)
