"""How different the seeds of one class are: mean pairwise distance of their activation paths."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

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

