"""How strongly a model's prototypes of each class express a given mark (a planted shortcut's detector).

Two scores per class, both data-free:

``mark_corr``
    Pearson correlation between a prototype and the mark's pattern (the mark on its background), mean
    over the class's prototypes: over the whole image by default, so a uniform mark counts by its
    contrast with the rest of the image, and a mark that a prototype renders blurred or spread (as
    robustness transforms and smoothness penalties make it) still counts; or over the mask grown by
    ``ring`` pixels. The best over the mark moved by up to ``shift`` pixels (default 2: the generation's
    random translations, and every phase of period-4 stripes). 1 for a prototype equal to the mark
    pattern; about 0 for unrelated images.
``paste_logit_change`` / ``paste_logprob_change``
    How much the class's logit / log-probability rises when the mark is pasted onto a neutral baseline
    image (the model's equidistant baseline: every class equally likely, found by minimising L_pv).
    A property of the model, not of its prototypes: it tells whether the mark alone pushes a class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..metrics import pearson
from ..models import Classifier
from ..objectives import probability_variance
from .marks import Mark

BASELINES = ("equidistant", "grey", "black")


def shifted(pattern: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``pattern`` ``[C,H,W]`` moved by (dy, dx) pixels, edges repeated (no wrap-around)."""
    if dy == 0 and dx == 0:
        return pattern
    s = max(abs(dy), abs(dx))
    padded = F.pad(pattern[None], (s, s, s, s), mode="replicate")[0]
    h, w = pattern.shape[-2:]
    return padded[:, s - dy:s - dy + h, s - dx:s - dx + w]


def mark_correlation(images: torch.Tensor, mark: Mark, ring: int | None = None, shift: int = 0) -> torch.Tensor:
    """``[N]`` Pearson correlation of each image with the mark pattern in the window (None: whole image);
    with ``shift`` > 0 the best over the pattern moved by up to ``shift`` pixels each way."""
    mark.check_fits(images)
    window = mark.window(ring)
    values = images.detach().cpu()[:, :, window].flatten(1).double()
    best = None
    for dy in range(-int(shift), int(shift) + 1):
        for dx in range(-int(shift), int(shift) + 1):
            template = shifted(mark.pattern, dy, dx)[:, window].flatten().double()
            if template.std() == 0:
                if dy == 0 and dx == 0:
                    where = "the image" if ring is None else f"its window (mask grown by {ring} px)"
                    raise ConfigError(f"mark {mark.kind} is uniform within {where}: nothing to correlate with; give "
                                      "the mark a background that differs from it"
                                      + ("" if ring is None else " or a larger ring"))
                continue
            corr = pearson(values, template)
            best = corr if best is None else torch.maximum(best, corr)
    return best.float()


def neutral_baseline(classifier: Classifier, kind: str = "equidistant", steps: int = 100, lr: float = 0.05) -> torch.Tensor:
    """A ``[1,C,H,W]`` baseline image: ``equidistant`` (L_pv minimised from near-grey), ``grey`` or ``black``."""
    if kind not in BASELINES:
        raise ConfigError(f"unknown baseline {kind!r}: choose one of {', '.join(BASELINES)}")
    shape = (1, classifier.channels, classifier.input_size, classifier.input_size)
    device = classifier.network.mean.device
    if kind == "black":
        return torch.zeros(shape, device=device)
    if kind == "grey":
        return torch.full(shape, 0.5, device=device)
    # From grey plus a little seeded noise: at exact grey a network can have no gradient at all.
    logit = (0.1 * torch.randn(shape, generator=torch.Generator().manual_seed(0))).to(device).requires_grad_(True)
    opt = torch.optim.Adam([logit], lr=lr)
    with torch.enable_grad():
        for _ in range(int(steps)):
            opt.zero_grad(set_to_none=True)
            probability_variance(classifier.network(torch.sigmoid(logit))).sum().backward()
            opt.step()
    return torch.sigmoid(logit).detach()


@torch.no_grad()
def paste_effect(classifier: Classifier, mark: Mark, baseline: torch.Tensor) -> dict[str, torch.Tensor]:
    """``[K]`` change of every class's logit and log-probability when ``mark`` is pasted on ``baseline``."""
    before = classifier.network(baseline).float()[0]
    after = classifier.network(mark.paste(baseline)).float()[0]
    return {"logit": after - before, "logprob": after.log_softmax(-1) - before.log_softmax(-1),
            "prob": after.softmax(-1)}


@dataclass
class DetectionScores:
    """Per class of one model: mark correlation of its prototypes and the paste effect."""

    label: str
    class_ids: list[int]
    class_names: list[str]
    mark_corr: torch.Tensor  # [classes], mean over the class's prototypes
    mark_corr_rows: list[torch.Tensor]  # per class, one value per prototype
    paste_logit_change: torch.Tensor  # [classes]
    paste_logprob_change: torch.Tensor  # [classes]

    def records(self) -> list[dict[str, Any]]:
        out = []
        order = self.mark_corr.argsort(descending=True).tolist()
        rank = {i: r + 1 for r, i in enumerate(order)}
        for i, (c, name) in enumerate(zip(self.class_ids, self.class_names)):
            rows = self.mark_corr_rows[i]
            out.append({"model": self.label, "class_index": c, "class_name": name,
                        "mark_corr": float(self.mark_corr[i]), "mark_corr_rank": rank[i],
                        "mark_corr_min": float(rows.min()), "mark_corr_max": float(rows.max()),
                        "paste_logit_change": float(self.paste_logit_change[i]),
                        "paste_logprob_change": float(self.paste_logprob_change[i])})
        return out


def detection_scores(classifier: Classifier, images: torch.Tensor, class_ids: Sequence[int], mark: Mark,
                     label: str = "model", ring: int | None = None, shift: int = 2,
                     baseline: str = "equidistant", baseline_steps: int = 100) -> DetectionScores:
    """Score how strongly the prototypes ``images`` (rows of ``class_ids``) of ``classifier`` express ``mark``."""
    if images.shape[1:] != (classifier.channels, classifier.input_size, classifier.input_size):
        raise ConfigError(f"{label}: prototypes are {tuple(images.shape[1:])}, model {classifier.name} takes "
                          f"{(classifier.channels, classifier.input_size, classifier.input_size)}")
    ids = torch.tensor([int(c) for c in class_ids])
    corr = mark_correlation(images, mark, ring, shift)
    classes = list(dict.fromkeys(int(c) for c in class_ids))
    effect = paste_effect(classifier, mark,
                          neutral_baseline(classifier, baseline, baseline_steps))
    per_class = [corr[ids == c] for c in classes]
    return DetectionScores(
        label=label, class_ids=classes, class_names=[classifier.class_names[c] for c in classes],
        mark_corr=torch.stack([v.mean() for v in per_class]), mark_corr_rows=per_class,
        paste_logit_change=effect["logit"].cpu()[classes], paste_logprob_change=effect["logprob"].cpu()[classes],
    )
