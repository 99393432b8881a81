"""Terms that pull a prototype's per-layer feature distributions towards those of its class's guide photos.

Per layer l and channel c the prototype has P values (one per position); the guide photos of its class
have a distribution of values (pooled over photos and positions). Every term is scale-free per layer
(divided by the guide's root-mean-square channel standard deviation, s_l) and averaged over layers:

* :class:`SortMatch` (VITAL's sort matching): mean over channels and positions of
  ((sorted prototype values) - (the guide's quantiles at the same ranks))^2 / s_l^2;
* :class:`MomentMatch`: mean over channels of ((mu_p - mu_g)^2 + (sd_p - sd_g)^2) / s_l^2.

With ``relevance=true`` each channel's cost is weighted by its relevance for the class on the guide
photos (|activation x gradient of the class logit|, mean 1 per layer). A row aiming at several classes
(a hybrid) is pulled towards the mixture of their statistics with its target weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..generation.context import StepContext
from ..models.classifier import LOGITS
from ..regularizers.terms import Regularizer
from .stats import GuideStats, positions

if TYPE_CHECKING:
    from ..models import Classifier


class GuidedTerm(Regularizer):
    """A regulariser that reads guide statistics (:meth:`bind` them before the first step)."""

    needs_guide = True

    def __init__(self, weight: float = 1.0, relevance: bool = False, layers: str | list[str] = "path") -> None:
        super().__init__(weight)
        self.relevance = bool(relevance)
        self.which = layers
        self.guide_layers: list[str] = []
        self.register_buffer("class_index", torch.zeros(0, dtype=torch.long), persistent=False)

    def layers(self, classifier: "Classifier") -> list[str]:
        if self.which == "path":
            return [l for l in classifier.layer_names if l != LOGITS]
        return [str(l) for l in self.which]

    def bind(self, guide: GuideStats) -> None:
        """Keep ``guide``'s statistics (as buffers, so they move with the module)."""
        self.guide_layers = list(guide.layers)
        self.class_index = torch.tensor(guide.classes, dtype=torch.long)
        for i, l in enumerate(guide.layers):
            scale = guide.std[l].pow(2).mean(1).sqrt().clamp_min(1e-6)  # [G]
            self.register_buffer(f"scale_{i}", scale, persistent=False)
            self.register_buffer(f"weight_{i}", guide.relevance[l] if self.relevance
                                 else torch.ones_like(guide.mean[l]), persistent=False)
            self._keep(i, guide, l)

    def _keep(self, i: int, guide: GuideStats, layer: str) -> None:
        raise NotImplementedError

    def _mix(self, ctx: StepContext) -> torch.Tensor:
        """Each row's weights over the guided classes ``[R, G]`` (rows sum to 1)."""
        if not self.guide_layers:
            raise RuntimeError(f"{type(self).__name__}: no guide statistics; bind them first (experiment=guided "
                               "does, from guide.n_images photos of each class)")
        mix = ctx.targets[:, self.class_index]
        if not torch.allclose(mix.sum(1), torch.ones_like(mix[:, 0]), atol=1e-4):
            raise ConfigError(f"{type(self).__name__}: a row targets a class without guide photos "
                              f"(guided classes: {self.class_index.tolist()})")
        return mix

    def forward(self, ctx: StepContext) -> torch.Tensor:
        mix = self._mix(ctx)
        losses = []
        for i, l in enumerate(self.guide_layers):
            if l not in ctx.activations:
                raise RuntimeError(f"{type(self).__name__}: layer {l!r} was not recorded")
            values = positions(ctx.activations[l], ctx.reduction)  # [R, C, P]
            scale = mix @ getattr(self, f"scale_{i}")  # [R]
            weight = mix @ getattr(self, f"weight_{i}")  # [R, C]
            cost = self._channel_cost(i, values, mix)  # [R, C]
            losses.append((cost * weight).mean(1) / scale.pow(2))
        return self.weight * torch.stack(losses, 1).mean(1)

    def _channel_cost(self, i: int, values: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SortMatch(GuidedTerm):
    """VITAL-style sort matching: each channel's sorted values against the guide's quantiles."""

    def _keep(self, i: int, guide: GuideStats, layer: str) -> None:
        self.register_buffer(f"quantiles_{i}", guide.quantiles[layer], persistent=False)

    def _channel_cost(self, i: int, values: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        quantiles = getattr(self, f"quantiles_{i}")  # [G, C, Q]
        target = torch.einsum("rg,gcq->rcq", mix, quantiles)
        count = values.shape[-1]
        if target.shape[-1] != count:  # another number of positions (image size): the same quantile curve
            target = F.interpolate(target, size=count, mode="linear", align_corners=False)
        return (values.sort(-1).values - target).pow(2).mean(-1)


class MomentMatch(GuidedTerm):
    """Moment matching: each channel's mean and standard deviation against the guide's."""

    def _keep(self, i: int, guide: GuideStats, layer: str) -> None:
        self.register_buffer(f"mean_{i}", guide.mean[layer], persistent=False)
        self.register_buffer(f"std_{i}", guide.std[layer], persistent=False)

    def _channel_cost(self, i: int, values: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        mean, std = mix @ getattr(self, f"mean_{i}"), mix @ getattr(self, f"std_{i}")
        return (values.mean(-1) - mean).pow(2) + (values.std(-1, unbiased=False) - std).pow(2)
