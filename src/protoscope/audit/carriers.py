"""Carriers: the images a mark (or a patch) is pasted onto to see which classes it raises, with no data.

Groups (``conf/audit.yaml`` ``carriers``):

``equidistant``  the generation's baseline stage from several seeds: the parameterisation optimised on
                 L_pv alone (every class equally likely), untransformed, like the first stage of a run.
``uniform``      plain images: grey ``levels`` and ``colours`` seeded random colours in [0.25, 0.75]. A
                 mark lands on them with nothing to mask it (the textured equidistant baselines drown a
                 faint watermark: on EfficientNet-Lite0 its gain ranks carton 2nd on grey but 79th to
                 939th on the 8 baselines).
``prototype``    the model's own prototypes from a ``protoscope-generate`` run folder (``run=``). A class's
                 gain is averaged over the prototypes of the *other* classes only.
``photo``        photos from a ``reference`` source (optional: an experiment, never the default).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..errors import ConfigError
from ..models import Classifier

log = logging.getLogger("protoscope")
GROUPS = ("equidistant", "uniform", "prototype", "photo")


@dataclass
class Carriers:
    """``images`` ``[N,C,H,W]`` in [0,1], each with its group and its class (-1: none)."""

    images: torch.Tensor
    groups: list[str]
    classes: list[int]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def counts(self) -> dict[str, int]:
        return {g: self.groups.count(g) for g in dict.fromkeys(self.groups)}

    def state(self) -> dict[str, Any]:
        """Tensors and plain values (``carriers.pt``, loaded with ``weights_only=True``)."""
        return {"images": self.images.clone(), "groups": list(self.groups), "classes": list(self.classes),
                "info": dict(self.info)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "Carriers":
        return cls(state["images"].float(), list(state["groups"]), [int(c) for c in state["classes"]],
                   dict(state.get("info") or {}))

    @classmethod
    def join(cls, parts: Sequence["Carriers"]) -> "Carriers":
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ConfigError("no carriers: enable at least one group (carriers.equidistant.seeds > 0, "
                              "carriers.uniform.levels, run=<generate run>, or carriers.photos > 0 with reference=...)")
        return cls(torch.cat([p.images for p in parts]), [g for p in parts for g in p.groups],
                   [c for p in parts for c in p.classes], {k: v for p in parts for k, v in p.info.items()})


def equidistant_baselines(classifier: Classifier, seeds: int, steps: int = 100, lr: float = 0.05,
                          param: str = "fourier", seed: int = 0) -> Carriers:
    """``seeds`` equidistant baselines: ``param`` images from seeded starts, ``steps`` Adam steps on L_pv."""
    from ..generation.renderer import render
    from ..objectives import ProbabilityVariance

    if seeds <= 0:
        return Carriers(torch.zeros(0, classifier.channels, classifier.input_size, classifier.input_size), [], [])
    images = render(classifier, ProbabilityVariance(), steps=int(steps), rows=int(seeds), param=param,
                    transform="none", lr=float(lr), seed=int(seed), device=classifier.network.mean.device,
                    progress=False).cpu()
    return Carriers(images, ["equidistant"] * len(images), [-1] * len(images),
                    {"equidistant": {"seeds": int(seeds), "steps": int(steps), "param": param, "seed": int(seed)}})


def uniform_carriers(classifier: Classifier, levels: Sequence[float] = (0.5,), colours: int = 0,
                     seed: int = 0) -> Carriers:
    """Plain images: one per grey level, and ``colours`` seeded random colours (greys for 1-channel models)."""
    if any(not 0.0 <= float(v) <= 1.0 for v in levels) or int(colours) < 0:
        raise ConfigError(f"carriers.uniform: levels must be in [0, 1] and colours >= 0 (got {list(levels)}, {colours})")
    ch, size = classifier.channels, classifier.input_size
    values = [torch.full((ch,), float(v)) for v in levels]
    draws = 0.25 + 0.5 * torch.rand(int(colours), 3, generator=torch.Generator().manual_seed(int(seed)))
    values += [d[:ch] if ch == 3 else d.mean().expand(ch) for d in draws]
    if not values:
        return Carriers(torch.zeros(0, ch, size, size), [], [])
    images = torch.stack([v.view(ch, 1, 1).expand(ch, size, size) for v in values]).contiguous()
    return Carriers(images, ["uniform"] * len(values), [-1] * len(values),
                    {"uniform": {"levels": [float(v) for v in levels], "colours": int(colours)}})


def prototype_carriers(images: torch.Tensor, class_ids: Sequence[int], source: str) -> Carriers:
    return Carriers(images.float().cpu(), ["prototype"] * len(images), [int(c) for c in class_ids],
                    {"prototype": {"run": source, "count": len(images)}})


def photo_carriers(reference: Any, classifier: Classifier, per_class: int) -> Carriers:
    """Up to ``per_class`` photos of every class the ``reference`` source has (seeded choice)."""
    from ..reference.build import build_source

    source = build_source(reference)
    seed = int(reference.get("seed", 0))
    pairs = list(source.samples(classifier, None, max_per_class=int(per_class), seed=seed))
    if not pairs:
        raise ConfigError(f"reference {reference.get('name')} has no photos for this model's classes")
    images = torch.stack([img.float() for _, img in pairs])
    return Carriers(images, ["photo"] * len(pairs), [int(c) for c, _ in pairs],
                    {"photo": {"reference": str(reference.get("name")), "per_class": int(per_class),
                               "count": len(pairs)}})
