"""Per-class feature distributions of a few guide photos, per layer and channel."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..errors import ReferenceDataError
from ..models.classifier import LOGITS, Classifier
from ..models.hooks import record_activations
from ..models.reduce import Reduction
from ..reference.base import ReferenceSource, Split

MAX_QUANTILES = 1024  # quantiles kept per channel (interpolated to the prototype's number of positions)


def positions(act: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """A layer's output as ``[B, C, P]``: every channel's values over the P positions (patch tokens of a
    transformer, after its prefix tokens; one position for a ``[B, C]`` output)."""
    if act.dim() == 2:
        return act.unsqueeze(-1)
    if act.dim() == 3 and reduction.kind == "tokens":
        return act[:, int(reduction.prefix_tokens):].transpose(1, 2)
    return act.flatten(2)


def quantile_curve(values: torch.Tensor, count: int) -> torch.Tensor:
    """``values [..., P]`` -> their ``count`` quantiles at the midpoints (k + 0.5) / count, sorted ``[..., count]``."""
    ordered = values.sort(-1).values
    n = ordered.shape[-1]
    if n == count:
        return ordered
    where = ((torch.arange(count, dtype=torch.float64) + 0.5) / count * n - 0.5).clamp(0, n - 1)
    low = where.floor().long()
    high = (low + 1).clamp(max=n - 1)
    frac = (where - low).to(ordered.dtype)
    return ordered[..., low] * (1 - frac) + ordered[..., high] * frac


@dataclass
class GuideStats:
    """Guide statistics of ``classes`` at ``layers``: for layer l, ``quantiles[l]`` is ``[G, C, Q]``,
    ``mean[l]``, ``std[l]`` and ``relevance[l]`` are ``[G, C]`` (rows in ``classes`` order);
    ``photos[c]`` names the photos of class c that were used, ``n_images`` how many per class."""

    classes: list[int]
    layers: list[str]
    quantiles: dict[str, torch.Tensor]
    mean: dict[str, torch.Tensor]
    std: dict[str, torch.Tensor]
    relevance: dict[str, torch.Tensor]
    photos: dict[int, list[str]] = field(default_factory=dict)
    n_images: int = 0

    def record(self, class_names: Sequence[str], part: Any = None) -> dict[str, Any]:
        """What run.json keeps: the part, how many photos per class and which."""
        return {"part": part, "n_images": self.n_images, "layers": len(self.layers),
                "photos": {class_names[c]: list(self.photos[c]) for c in self.classes}}


def _class_stats(classifier: Classifier, images: torch.Tensor, c: int, layers: list[str],
                 device: torch.device) -> dict[str, tuple[torch.Tensor, ...]]:
    """(quantiles [C,Q], mean [C], std [C], relevance [C]) per layer for the photos ``images`` of class c."""
    images = images.to(device).requires_grad_(True)  # a graph, so the class logit has gradients at every layer
    with torch.enable_grad(), record_activations(classifier.network, layers, reduce=None) as store:
        logits = classifier.network(images)
        acts = [store[l] for l in layers]
        grads = torch.autograd.grad(logits[:, c].sum(), acts, allow_unused=True)
    out = {}
    for l, act, grad in zip(layers, acts, grads):
        values = positions(act.detach().float(), classifier.reduction)  # [N, C, P]
        pooled = values.transpose(0, 1).flatten(1)  # [C, N*P]
        count = min(values.shape[-1], MAX_QUANTILES)
        # relevance: |activation x gradient of the class logit|, summed over positions, mean over photos
        if grad is None:
            relevance = torch.ones(values.shape[1])
        else:
            relevance = (values * positions(grad.float(), classifier.reduction)).sum(-1).abs().mean(0)
            relevance = relevance / relevance.mean().clamp_min(1e-12)
        out[l] = (quantile_curve(pooled, count).cpu(), pooled.mean(1).cpu(),
                  pooled.std(1, unbiased=False).cpu(), relevance.cpu())
    return out


def compute_guide_stats(classifier: Classifier, source: ReferenceSource, classes: Sequence[int], n_images: int,
                        split: Split | None, seed: int = 0, layers: Sequence[str] | None = None,
                        device: str | torch.device | None = None) -> GuideStats:
    """The guide statistics of ``n_images`` photos of every class in ``classes`` (the ``split`` part of
    ``source``, a seeded choice), at ``layers`` (default: the activation path without the logits)."""
    layers = [l for l in (layers or classifier.layer_names) if l != LOGITS]
    home = classifier.network.mean.device
    device = torch.device(device) if device is not None else home
    plan = source.plan(classifier, sorted({int(c) for c in classes}), n_images, seed, split)
    per_class: dict[int, list[Any]] = {}
    for c, item in plan:
        per_class.setdefault(c, []).append(item)
    missing = [c for c in classes if c not in per_class]
    if missing:
        raise ReferenceDataError(f"guide: no photos of class {classifier.class_names[missing[0]]!r} in "
                                 f"{source.name}{'' if split is None else ' part ' + split.part}: "
                                 f"{source.empty_hint(missing[0], classifier)}")
    order = sorted(per_class)
    stats = {l: ([], [], [], []) for l in layers}
    try:
        classifier.to(device)
        for c in order:
            images = torch.stack([source.load(item, classifier) for item in per_class[c]])
            for l, parts in _class_stats(classifier, images, c, layers, device).items():
                for keep, part in zip(stats[l], parts):
                    keep.append(part)
    finally:
        classifier.to(home)
    return GuideStats(classes=order, layers=layers,
                      quantiles={l: torch.stack(s[0]) for l, s in stats.items()},
                      mean={l: torch.stack(s[1]) for l, s in stats.items()},
                      std={l: torch.stack(s[2]) for l, s in stats.items()},
                      relevance={l: torch.stack(s[3]) for l, s in stats.items()},
                      photos={c: [str(item) for item in per_class[c]] for c in order},
                      n_images=min(len(v) for v in per_class.values()))
