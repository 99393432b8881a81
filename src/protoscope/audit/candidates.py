"""Shortcut candidates without a mark: patches that flip many classes to their own.

Each class's best patch (from :mod:`protoscope.audit.patches`) is pasted onto carriers of all other classes
(the model's prototypes of other classes, or baselines, each labelled by the model's top-1 class on it) at
evenly spread positions. A patch that turns many of them into its own class is a local feature that
overrides the rest of the image: a shortcut candidate. Patches are ranked by flip rate, then by mean
log-probability gain; a patch whose flip rate stands out from the others' by a robust z-score (median and
MAD over all patches, as Neural Cleanse's anomaly index; the spread is floored at ``min_spread`` so that a
few flips among patches that flip nothing are no anomaly) is marked a candidate.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..models import Classifier
from .patches import carrier_logits, grid_positions, pasted_logits


def robust_z(values: torch.Tensor, min_spread: float) -> torch.Tensor:
    """(x - median) / max(1.4826 * MAD, ``min_spread``): the anomaly index of each value."""
    median = values.median()
    mad = (values - median).abs().median() * 1.4826
    return (values - median) / mad.clamp_min(min_spread)


def best_rows(classes: Sequence[int], scores: Sequence[float]) -> list[int]:
    """Per class, the index of the row with the highest score (its best patch), in first-seen class order."""
    best: dict[int, int] = {}
    for i, (c, s) in enumerate(zip(classes, scores)):
        if int(c) not in best or s > scores[best[int(c)]]:
            best[int(c)] = i
    return list(best.values())


def shortcut_candidates(classifier: Classifier, patches: torch.Tensor, classes: Sequence[int], carriers: torch.Tensor,
                        carrier_classes: Sequence[int] | None = None, per_side: int = 3, opacity: float = 1.0,
                        threshold: float = 2.0, min_spread: float = 0.05) -> list[dict]:
    """Rank ``patches`` (one per class ``classes[r]``) by how many carriers of other classes they flip to their
    own class. ``carrier_classes``: each carrier's class (default: the model's top-1 on it); a patch is scored
    only on carriers of other classes. A patch is a ``candidate`` when its flip rate's robust z-score
    (spread floored at ``min_spread``) is at least ``threshold``. Returns records sorted best first."""
    before = carrier_logits(classifier, carriers)
    own = before.argmax(-1) if carrier_classes is None else torch.tensor([int(c) for c in carrier_classes])
    positions = grid_positions(classifier.input_size, patches.shape[-1], per_side)
    after = pasted_logits(classifier, patches, carriers, positions, opacity)  # [R, N, P, K]
    records = []
    for r, c in enumerate(int(c) for c in classes):
        others = own != c
        if not others.any():
            continue
        top1 = after[r, others].argmax(-1)  # [N', P]
        flipped = (top1 == c).float()
        gain = after[r, others].log_softmax(-1)[..., c] - before[others].log_softmax(-1)[:, c, None]
        flipped_classes = sorted({int(k) for k, f in zip(own[others].tolist(), flipped.mean(1).tolist()) if f >= 0.5})
        records.append({"class_index": c, "class_name": classifier.class_names[c],
                        "flip_rate": float(flipped.mean()), "logprob_gain": float(gain.mean()),
                        "carrier_classes": int(own[others].unique().numel()),
                        "classes_flipped": len(flipped_classes), "carriers": int(others.sum())})
    if not records:
        return records
    flip = torch.tensor([r["flip_rate"] for r in records])
    gain = torch.tensor([r["logprob_gain"] for r in records])
    z_flip, z_gain = robust_z(flip, min_spread), robust_z(gain, 0.1)
    for rec, zf, zg in zip(records, z_flip.tolist(), z_gain.tolist()):
        rec["flip_z"], rec["gain_z"] = zf, zg
        rec["candidate"] = zf >= threshold
    records.sort(key=lambda r: (-r["flip_rate"], -r["logprob_gain"]))
    for i, rec in enumerate(records):
        rec["rank"] = i + 1
    return records
