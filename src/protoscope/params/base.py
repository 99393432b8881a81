"""Shared parts of the image parameterisations."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Square root of the RGB colour correlation of natural images (Olah et al., Lucid),
# normalised so that its largest column norm is 1.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


def decorrelate_color(x: torch.Tensor, rowwise: bool = False) -> torch.Tensor:
    """Map decorrelated channels to RGB: [R,3,H,W] -> [R,3,H,W]. ``rowwise``: one row per call, so that a
    row's rounding (the matmul's, forward and backward) does not depend on how many rows there are."""
    if rowwise and x.shape[0] > 1:
        return torch.cat([decorrelate_color(row) for row in x.split(1)])
    return torch.einsum("rchw,dc->rdhw", x, COLOR_SQRT.to(x))


def correlate_color(rgb: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`decorrelate_color`: RGB -> decorrelated channels."""
    return torch.einsum("rdhw,cd->rchw", rgb, torch.linalg.inv(COLOR_SQRT.double()).to(rgb))


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [R,C,H,W] with reflect padding."""
    k = gaussian_kernel(sigma).to(x)
    c, pad = x.shape[1], (len(k) - 1) // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


class ImageParam(nn.Module):
    """A batch of R images held as one trainable tensor; ``forward()`` returns [R,C,H,W] in [0,1]."""

    def __init__(self, rows: int, channels: int, size: int, decorrelate: bool = True) -> None:
        super().__init__()
        self.rows, self.channels, self.size = rows, channels, size
        self.decorrelate = bool(decorrelate) and channels == 3
        self.rowwise = False  # decorrelate one row per call (set for speed.batch_invariant runs)

    def param_shape(self) -> Sequence[int]:
        raise NotImplementedError

    @torch.no_grad()
    def take_rows_(self, other: "ImageParam") -> None:
        """Hold ``other``'s rows in this object's tensors (their device and dtype), so an optimiser built
        on this parameterisation optimises them (a new chunk of rows)."""
        for p, q in zip(self.parameters(), other.parameters()):
            p.data = q.data.to(p.device, p.dtype)
        self.rows = other.rows

    def init_rows(self, generators: Sequence[torch.Generator], std: float) -> torch.Tensor:
        """Initial values: row r drawn only from ``generators[r]`` (so rows are independent)."""
        shape = self.param_shape()[1:]
        if not generators:  # a process that holds no rows in this chunk
            return torch.zeros(0, *shape)
        return torch.stack([torch.randn(*shape, generator=g) * std for g in generators])

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Colour mixing then a sigmoid onto the valid pixel range."""
        if self.decorrelate:
            x = decorrelate_color(x, self.rowwise)
        return torch.sigmoid(x)

    def from_rgb(self, images: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """Inverse of :meth:`to_rgb`: images in (0,1) -> values before colour mixing and sigmoid."""
        x = torch.logit(images.clamp(eps, 1 - eps))
        return correlate_color(x) if self.decorrelate else x

    @torch.no_grad()
    def set_images_(self, images: torch.Tensor) -> None:
        """Set the parameter so that ``forward()`` returns ``images`` [R,C,H,W] in (0,1) (values are
        clamped to [1e-6, 1-1e-6] first)."""
        raise NotImplementedError

    @torch.no_grad()
    def blur_(self, sigma: float) -> None:
        """Blur the images (in [0,1], as returned by ``forward()``) by a Gaussian of ``sigma`` pixels
        with reflect padding, and set the parameter to represent the blurred images."""
        self.set_images_(gaussian_blur(self(), sigma))
