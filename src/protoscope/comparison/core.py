"""How differently two models see each class, measured on their prototypes (same classes, same seeds).

For class c with prototypes P_A (made with model A) and P_B (model B), one per seed, three terms:

``pixel``   mean over pixels of |mean over seeds of (P_B - P_A)|: the consistent pixel difference (what
            the heat map shows; seed-to-seed variation, common to every class, averages out).
            ``pixel_l1`` (mean |P_B - P_A| per seed pair) is reported too.
``cross``   cross-evaluation: how much of its logit for c each model loses when handed the other model's
            prototype, ½[(z_A(c|P_A) - z_A(c|P_B)) + (z_B(c|P_B) - z_B(c|P_A))], mean over seeds. Logits,
            because prototypes drive probabilities to ~1 in both models (``cross_prob``, the same with
            probabilities, is reported too).
``path``    1 - the mean over both models of the Spearman agreement (mean over layers) between the
            model's activation path of P_A and of P_B (paths averaged over seeds). Data-free.

The terms have different units, so each is divided by its mean absolute value over the classes of this
comparison (1 = as different as the average class); ``difference`` is the weighted mean of these
relative terms (weights ``pixel``, ``cross``, ``path``) and classes are ranked by it (rank 1: seen
most differently). Two identical models give 0 for every term and every class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from ..evaluation.core import forward_paths
from ..metrics import spearman
from ..models import Classifier

TERMS = ("pixel", "cross", "path")
SCALE_EPS = 1e-12  # a term whose mean |value| over classes is below this is zero everywhere


@dataclass
class Side:
    """One model and its prototypes: rows of ``images`` ``[R,C,H,W]`` in [0,1] with classes and seeds."""

    label: str
    classifier: Classifier
    images: Tensor
    class_ids: list[int]
    seeds: list[int]
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[tuple[int, int]]:
        return list(zip(self.class_ids, self.seeds))


@dataclass
class Comparison:
    """Per-class records in rank order, and the seed-mean difference map ``P_B - P_A`` of every class."""

    a: Side
    b: Side
    records: list[dict[str, Any]]
    diff_maps: dict[int, Tensor]  # class index -> [C,H,W]
    weights: dict[str, float]

    @property
    def ranking(self) -> list[int]:
        """Class indices, most different first."""
        return [r["class_index"] for r in self.records]

    def rows_of(self, class_id: int) -> list[int]:
        return [i for i, c in enumerate(self.a.class_ids) if c == class_id]


def check_same_classes(a: Classifier, b: Classifier, label_a: str = "A", label_b: str = "B") -> None:
    """Two models are comparable only with the same class list (names, in order) and input format."""
    if list(a.class_names) != list(b.class_names):
        if len(a.class_names) != len(b.class_names):
            detail = f"{len(a.class_names)} vs {len(b.class_names)} classes"
        else:
            i = next(i for i, (x, y) in enumerate(zip(a.class_names, b.class_names)) if x != y)
            detail = f"class {i} is {a.class_names[i]!r} vs {b.class_names[i]!r}"
        raise ConfigError(f"models {label_a} ({a.name}) and {label_b} ({b.name}) have different class lists "
                          f"({detail}): compare needs two models with the same classes in the same order")
    if (a.channels, a.input_size) != (b.channels, b.input_size):
        raise ConfigError(f"models {label_a} and {label_b} take different images ({a.channels}x{a.input_size}px vs "
                          f"{b.channels}x{b.input_size}px): compare needs the same input format")


def align(a: Side, b: Side) -> Side:
    """``b`` with its rows in ``a``'s order; a clear error unless both have the same (class, seed) rows."""
    check_same_classes(a.classifier, b.classifier, a.label, b.label)
    ra, rb = a.rows(), b.rows()
    if len(set(ra)) != len(ra) or len(set(rb)) != len(rb):
        raise ConfigError("a prototype set holds the same (class, seed) twice; compare needs one prototype per row")
    if set(ra) != set(rb):
        only_a, only_b = sorted(set(ra) - set(rb))[:3], sorted(set(rb) - set(ra))[:3]
        raise ConfigError(f"{a.label} and {b.label} have different prototype rows (class, seed): only in {a.label} "
                          f"{only_a}, only in {b.label} {only_b}; generate both with the same classes and seeds_per_class")
    if a.images.shape[1:] != b.images.shape[1:]:
        raise ConfigError(f"{a.label} prototypes are {tuple(a.images.shape[1:])}, {b.label} prototypes "
                          f"{tuple(b.images.shape[1:])}: generate both at the same image_size")
    where = {row: i for i, row in enumerate(rb)}
    order = [where[row] for row in ra]
    return Side(b.label, b.classifier, b.images[order], [b.class_ids[i] for i in order],
                [b.seeds[i] for i in order], b.source, b.info)


def _weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    w = {t: 1.0 for t in TERMS} if weights is None else {t: float(weights.get(t, 0.0)) for t in TERMS}
    unknown = set(weights or {}) - set(TERMS)
    if unknown:
        raise ConfigError(f"unknown difference terms {sorted(unknown)} in weights: use {', '.join(TERMS)}")
    if any(v < 0 for v in w.values()) or sum(w.values()) <= 0:
        raise ConfigError(f"weights must be >= 0 with a positive sum, got {w}")
    return w


def _path_agreement(paths_a: dict[str, Tensor], paths_b: dict[str, Tensor], rows: list[int]) -> float:
    """Mean over layers of Spearman(seed-mean path of P_A, seed-mean path of P_B) in one model."""
    scores = [float(spearman(paths_a[n][rows].mean(0, keepdim=True), paths_b[n][rows].mean(0, keepdim=True))[0])
              for n in paths_a]
    return sum(scores) / len(scores)


def difference_scores(records: Sequence[Mapping[str, float]], weights: Mapping[str, float]) -> list[float]:
    """Per class: the weighted mean over terms of term / (mean |term| over the classes); a term that is
    zero for every class contributes zero."""
    scale = {t: sum(abs(r[t]) for r in records) / len(records) for t in TERMS}
    total = sum(weights[t] for t in TERMS)
    return [sum(weights[t] * (r[t] / scale[t] if scale[t] > SCALE_EPS else 0.0) for t in TERMS) / total
            for r in records]


def compare_sides(a: Side, b: Side, weights: Mapping[str, float] | None = None, batch_size: int = 64) -> Comparison:
    """Score every class of ``a`` and ``b`` (see the module doc) and rank them, most different first."""
    w = _weights(weights)
    b = align(a, b)
    fwd: dict[tuple[str, str], tuple[dict[str, Tensor], Tensor]] = {}
    for m, model in (("A", a.classifier), ("B", b.classifier)):
        for x, side in (("A", a), ("B", b)):
            fwd[m, x] = forward_paths(model, side.images.float(), batch_size, desc=f"{m} on {x}")
    prob = {k: v[1].softmax(-1) for k, v in fwd.items()}
    logit = {k: v[1] for k, v in fwd.items()}
    records: list[dict[str, Any]] = []
    diff_maps: dict[int, Tensor] = {}
    for c in dict.fromkeys(a.class_ids):
        rows = [i for i, k in enumerate(a.class_ids) if k == c]
        diff = b.images[rows].float() - a.images[rows].float()
        diff_maps[c] = diff.mean(0)
        p = {k: float(v[rows, c].mean()) for k, v in prob.items()}
        lg = {k: float(v[rows, c].mean()) for k, v in logit.items()}
        agree_a = _path_agreement(fwd["A", "A"][0], fwd["A", "B"][0], rows)
        agree_b = _path_agreement(fwd["B", "A"][0], fwd["B", "B"][0], rows)
        terms = {
            "pixel": float(diff_maps[c].abs().mean()),
            "cross": 0.5 * ((lg["A", "A"] - lg["A", "B"]) + (lg["B", "B"] - lg["B", "A"])),
            "path": 1.0 - 0.5 * (agree_a + agree_b),
        }
        records.append({
            "class_index": c, "class_name": a.classifier.class_names[c], "difference": 0.0, **terms,
            "pixel_l1": float(diff.abs().mean()),
            "cross_prob": 0.5 * ((p["A", "A"] - p["A", "B"]) + (p["B", "B"] - p["B", "A"])),
            f"p_{a.label}({a.label})": p["A", "A"], f"p_{b.label}({a.label})": p["B", "A"],
            f"p_{b.label}({b.label})": p["B", "B"], f"p_{a.label}({b.label})": p["A", "B"],
            f"z_{a.label}({a.label})": lg["A", "A"], f"z_{b.label}({a.label})": lg["B", "A"],
            f"z_{b.label}({b.label})": lg["B", "B"], f"z_{a.label}({b.label})": lg["A", "B"],
            f"path_agreement_{a.label}": agree_a, f"path_agreement_{b.label}": agree_b,
            "seeds": len(rows),
        })
    for rec, score in zip(records, difference_scores(records, w)):
        rec["difference"] = score
    records.sort(key=lambda r: (-r["difference"], r["class_index"]))
    for rank, rec in enumerate(records, 1):
        rec["rank"] = rank
    records = [{"rank": r["rank"], **{k: v for k, v in r.items() if k != "rank"}} for r in records]
    return Comparison(a, b, records, diff_maps, w)


def natural_cross_scores(a: Side, b: Side, references: Sequence[Any], batch_size: int = 64) -> dict[int, dict[str, float]]:
    """With natural-image references (one per model): each model's path similarity (layer-mean Spearman to
    its natural class-mean path) of both models' prototypes, per class, and the cross drop
    ½[(s_A(P_A) - s_A(P_B)) + (s_B(P_B) - s_B(P_A))]."""
    from ..evaluation.core import evaluate_prototypes

    b = align(a, b)
    s: dict[tuple[str, str], Tensor] = {}
    for (m, model), ref in zip((("A", a.classifier), ("B", b.classifier)), references):
        for x, side in (("A", a), ("B", b)):
            res = evaluate_prototypes(model, side.images, side.class_ids, side.seeds, ref, measures=["spearman"],
                                      label=f"{m}_on_{x}", batch_size=batch_size, progress=False)
            s[m, x] = res.layer_mean("spearman")
    out: dict[int, dict[str, float]] = {}
    ids = torch.tensor(a.class_ids)
    for c in dict.fromkeys(a.class_ids):
        rows = ids == c
        v = {k: float(t[rows].mean()) for k, t in s.items()}
        out[c] = {f"natural_{a.label}({a.label})": v["A", "A"], f"natural_{b.label}({a.label})": v["B", "A"],
                  f"natural_{b.label}({b.label})": v["B", "B"], f"natural_{a.label}({b.label})": v["A", "B"],
                  "natural_cross": 0.5 * ((v["A", "A"] - v["A", "B"]) + (v["B", "B"] - v["B", "A"]))}
    return out
