"""Data-free naturalness priors (issue 17): batch-norm statistics weighted per layer, and pixel statistics.

Neither reads a photo: :class:`LayerBatchNormStats` uses the model's own batch-norm running statistics,
:class:`PixelPrior` constants typical of photos (a share of clipped values, a colour spread).
"""

from __future__ import annotations

import torch

from ..generation.context import StepContext
from .terms import (Regularizer, bn_input_moments, check_scope, check_tolerance, check_without_batch_norms,
                    mean_excess)


class LayerBatchNormStats(Regularizer):
    """Each row's per-channel statistics at every batch-norm input against the layer's running statistics,
    scale-free per layer and weighted per layer (an extension of DeepInversion's ``bn_stats``).

    Layer l costs mean_c [``mean`` (mu_c - m_c)^2 + (s_c - sqrt(v_c))^2] / v_c (mu, s: the row's mean and standard
    deviation over positions; m, v: the running mean and variance), so every layer counts alike whatever
    its scale. ``scope``: each row's statistics (``row``) or all rows' together (``batch``, see
    :class:`~protoscope.regularizers.BatchNormStats`). ``mean`` < 1 leaves the channel means freer than the
    spreads (the running mean is the mean over all classes; pinning a row's means to it also removes what sets
    one class apart); ``tolerance`` frees them within that many running standard deviations instead (see
    :class:`~protoscope.regularizers.BatchNormStats`). Layer weights: ``first`` for the first batch norm (DeepInversion's first-layer
    multiplier), then ``decay^k`` for the k-th layer after it (``decay`` < 1 favours early layers, > 1 late
    ones); the loss is their weighted mean, times ``weight``. ``without_batch_norms``: as
    :class:`~protoscope.regularizers.BatchNormStats`.
    """

    needs_bn_inputs = True

    def __init__(self, weight: float = 1.0, first: float = 1.0, decay: float = 1.0, eps: float = 1e-5,
                 mean: float = 1.0, scope: str = "row", tolerance: float = 0.0,
                 without_batch_norms: str = "error") -> None:
        super().__init__(weight)
        self.scope = check_scope(scope, "bn_layers")
        self.tolerance = check_tolerance(tolerance, "bn_layers")
        self.without_batch_norms = check_without_batch_norms(without_batch_norms, "bn_layers")
        if mean < 0:
            raise ValueError(f"bn_layers: mean is the weight of the channel-mean cost, >= 0 (got {mean})")
        self.first, self.decay, self.eps, self.mean = float(first), float(decay), float(eps), float(mean)

    def layer_weights(self, count: int, device: torch.device) -> torch.Tensor:
        w = torch.tensor([self.decay ** max(k - 1, 0) for k in range(count)], device=device)
        w[0] = self.first
        return w / w.sum()

    def forward(self, ctx: StepContext) -> torch.Tensor:
        costs = []
        for mean, var, running_mean, running_var in bn_input_moments(ctx, "bn_layers", self.scope):
            running_var = running_var.clamp_min(self.eps)
            mean_cost = self.mean * mean_excess(mean, running_mean, running_var, self.tolerance).pow(2) / running_var
            std_cost = (var.sqrt() - running_var.sqrt()).pow(2) / running_var
            costs.append((mean_cost + std_cost).mean(1))
        costs = torch.stack(costs, 1)  # [R, layers]
        return self.weight * costs @ self.layer_weights(costs.shape[1], costs.device)


class PixelPrior(Regularizer):
    """Pixel statistics of photos as a prior on x in [0,1]: ``clip`` x (mean over values of how far each lies
    inside the ``margin`` next to 0 or 1, in units of the margin) + ``spread`` x ((colour spread - ``target``) /
    ``target``)^2, the colour spread being the mean over channels of each channel's standard deviation
    (see :mod:`protoscope.metrics.image_stats`)."""

    def __init__(self, weight: float = 1.0, clip: float = 1.0, margin: float = 0.02, spread: float = 1.0,
                 target: float = 0.25) -> None:
        super().__init__(weight)
        if not 0 < margin < 0.5 or target <= 0:
            raise ValueError(f"pixel prior: margin must be in (0, 0.5) and target > 0, got {margin} and {target}")
        self.clip, self.margin, self.spread, self.target = float(clip), float(margin), float(spread), float(target)

    def forward(self, ctx: StepContext) -> torch.Tensor:
        x = ctx.images
        near = (torch.relu(self.margin - x) + torch.relu(x - 1 + self.margin)) / self.margin
        spread = x.flatten(2).std(-1, unbiased=False).mean(1)
        return self.weight * (self.clip * near.flatten(1).mean(1)
                              + self.spread * ((spread - self.target) / self.target).pow(2))
