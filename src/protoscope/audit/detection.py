"""Detection per prototype on one ``protoscope-generate`` run: how strongly each prototype shows the mark.

The score is the mark kind's own detector (:meth:`protoscope.shortcuts.MarkKind.detect`): for a pattern
mark the best mask-weighted correlation at any position (:mod:`protoscope.shortcuts.matching`), for a
global change the shift that 90% of the pixels carry (a shape drawn in white does not count). Per class: the
mean, min and max over its prototypes, ranked by the mean.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..shortcuts.marks import MarkKind


def detect_prototypes(mark: MarkKind, images: torch.Tensor, class_ids: Sequence[int], seeds: Sequence[int],
                      class_names: Sequence[str], pad: int = 4,
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-prototype records, per-class records ranked by mean score)."""
    mark.check_fits(images)
    scores = mark.detect(images, pad=pad).double()
    rows = [{"class_index": int(c), "class_name": class_names[int(c)], "seed": int(s), "detection": float(v)}
            for c, s, v in zip(class_ids, seeds, scores.tolist())]
    classes = list(dict.fromkeys(int(c) for c in class_ids))
    ids = torch.tensor([int(c) for c in class_ids])
    per_class = []
    for c in classes:
        v = scores[ids == c]
        per_class.append({"class_index": c, "class_name": class_names[c], "detection": float(v.mean()),
                          "detection_min": float(v.min()), "detection_max": float(v.max()), "prototypes": len(v)})
    per_class.sort(key=lambda r: (-round(r["detection"], 6), r["class_index"]))
    for rank, rec in enumerate(per_class, 1):
        rec["detection_rank"] = rank
    return rows, per_class
