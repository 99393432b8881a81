"""The regularisation terms. Every loss is per row ([R]) so rows never interact."""

from __future__ import annotations

import torch
from torch import nn

from ..context import StepContext
from ..params import ImageParam


class Regularizer(nn.Module):
    """Base: ``forward(ctx) -> [R]`` weighted loss; ``after_step`` may edit the parameterisation."""

    needs_bn_inputs = False

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    def forward(self, ctx: StepContext) -> torch.Tensor | None:
        return None

    def after_step(self, param: ImageParam, step: int) -> None:
        """Called after each optimiser step of the prototype stage."""


class TotalVariation(Regularizer):
    """L_hf: mean |x[i+1]-x[i]|^p over neighbouring pixels (p=1: L1, p=2: L2), per row."""

    def __init__(self, weight: float = 1.0, p: int = 2) -> None:
        super().__init__(weight)
        if p not in (1, 2):
            raise ValueError(f"total variation norm p must be 1 or 2, got {p}")
        self.p = p

    def forward(self, ctx: StepContext) -> torch.Tensor:
        x = ctx.images
        dh = (x[..., 1:, :] - x[..., :-1, :]).abs().pow(self.p).flatten(1).mean(1)
        dw = (x[..., :, 1:] - x[..., :, :-1]).abs().pow(self.p).flatten(1).mean(1)
        return self.weight * (dh + dw)


class PixelL2(Regularizer):
    """Mean squared distance of pixels from mid-grey, per row (keeps colours from saturating)."""

    def forward(self, ctx: StepContext) -> torch.Tensor:
        return self.weight * (ctx.images - 0.5).pow(2).flatten(1).mean(1)


class Blur(Regularizer):
    """Not a loss: every ``every`` steps, blur the images by ``sigma`` pixels (removes adversarial noise)."""

    def __init__(self, sigma: float = 0.5, every: int = 4, weight: float = 0.0) -> None:
        super().__init__(weight)
        self.sigma, self.every = float(sigma), int(every)

    def after_step(self, param: ImageParam, step: int) -> None:
        if self.sigma > 0 and self.every > 0 and (step + 1) % self.every == 0:
            param.blur_(self.sigma)


class BatchNormStats(Regularizer):
    """DeepInversion-style, data-free: each row's per-channel mean/variance at every batch-norm
    input should match the layer's running statistics. Extension beyond the paper."""

    needs_bn_inputs = True

    def forward(self, ctx: StepContext) -> torch.Tensor:
        if not ctx.bn_inputs:
            raise RuntimeError("regularizer bn_stats needs a model with BatchNorm2d layers; this one has none")
        losses = []
        for x, running_mean, running_var in ctx.bn_inputs.values():
            flat = x.flatten(2)
            mean, var = flat.mean(-1), flat.var(-1, unbiased=False)
            losses.append((mean - running_mean).norm(dim=1) + (var - running_var).norm(dim=1))
        return self.weight * torch.stack(losses, 1).mean(1)
