"""Class entanglement from one run's prototypes: how much the prototypes of class c raise every other class.

``gain[c, k]``: mean over the prototypes of c of the logit of k minus its mean logit on the neutral
carriers (equidistant baselines, plain images). ``share[c, k] = gain[c, k] / gain[c, c]``: the part of c's own
raise that class k gets too (1 on the diagonal; about 1 for a class the model cannot tell from c).
Pairs of run classes are scored by ``mutual = min(share[c, k], share[k, c])`` (both raise each other;
a class with a large logit everywhere cannot dominate), and clusters are the connected groups of classes
whose mutual share is at least ``threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import ConfigError


@dataclass
class Entanglement:
    classes: list[int]  # the run's classes (rows of the matrices)
    names: list[str]  # every class name of the model
    gain: torch.Tensor  # [len(classes), K] float64
    share: torch.Tensor  # [len(classes), K]
    pairs: list[dict[str, Any]]  # unordered pairs of run classes, most entangled first
    clusters: list[list[int]]  # connected groups of run classes (size >= 2)
    threshold: float

    def square(self) -> torch.Tensor:
        """``share`` restricted to the run's classes: ``[C, C]``."""
        return self.share[:, self.classes]


def entanglement(proto_logits: torch.Tensor, class_ids: Sequence[int], neutral_logits: torch.Tensor,
                 names: Sequence[str], threshold: float = 0.5, decimals: int = 4) -> Entanglement:
    """From prototype logits ``[P,K]`` (rows of ``class_ids``) and neutral-carrier logits ``[M,K]``."""
    if len(neutral_logits) == 0:
        raise ConfigError("entanglement needs neutral carriers: set carriers.equidistant.seeds > 0 or carriers.uniform.levels")
    ids = torch.tensor([int(c) for c in class_ids])
    classes = list(dict.fromkeys(int(c) for c in class_ids))
    if len(classes) < 2:
        raise ConfigError("entanglement needs prototypes of at least 2 classes in the run")
    base = neutral_logits.double().mean(0)
    gain = torch.stack([(proto_logits[ids == c].double() - base).mean(0) for c in classes])
    own = torch.tensor([float(gain[i, c]) for i, c in enumerate(classes)], dtype=torch.float64)
    if bool((own <= 0).any()):
        weak = [names[c] for i, c in enumerate(classes) if own[i] <= 0]
        raise ConfigError(f"the prototypes of {', '.join(weak[:3])} do not raise their own class above the baseline: "
                          "generate them longer (schedule.prototype_steps) before measuring entanglement")
    share = gain / own[:, None]
    row = {c: i for i, c in enumerate(classes)}
    pairs = []
    for i, c in enumerate(classes):
        for k in classes[i + 1:]:
            a, b = float(share[i, k]), float(share[row[k], c])
            pairs.append({"class_a": c, "name_a": names[c], "class_b": k, "name_b": names[k],
                          "mutual": min(a, b), "a_raises_b": a, "b_raises_a": b})
    pairs.sort(key=lambda p: (-round(p["mutual"], decimals), p["class_a"], p["class_b"]))
    for rank, p in enumerate(pairs, 1):
        p["rank"] = rank
    return Entanglement(classes, list(names), gain, share, pairs, clusters_of(classes, pairs, threshold), threshold)


def clusters_of(classes: Sequence[int], pairs: Sequence[dict[str, Any]], threshold: float) -> list[list[int]]:
    """Connected groups of classes linked by a mutual share >= ``threshold`` (pairs in ranked order)."""
    parent = {c: c for c in classes}

    def root(c: int) -> int:
        while parent[c] != c:
            c = parent[c]
        return c

    for p in pairs:
        if p["mutual"] >= threshold:
            parent[root(p["class_b"])] = root(p["class_a"])
    groups: dict[int, list[int]] = {}
    for c in classes:
        groups.setdefault(root(c), []).append(c)
    return [g for g in groups.values() if len(g) > 1]
