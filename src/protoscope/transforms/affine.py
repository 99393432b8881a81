"""A random affine transform (pad, translate, scale, rotate), sampled per row, applied batched."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class RandomAffine(nn.Module):
    """Pad, then translate/scale/rotate each row by its own random draw, then crop back to size.

    Random numbers come from the caller as ``u`` [R, 4] uniform in [0,1) (translate x, y,
    scale, angle), so each row's transform depends only on that row's random stream.

    Args:
        pad: pixels of constant (0.5 grey) padding added before transforming (Lucent: 12).
        pad_fraction: more padding, as a fraction of the image size (added to ``pad``).
        jitter: maximum translation in pixels (Lucent: 8 + 4, two jitters).
        translate: maximum translation as a fraction of the image size (added to ``jitter``).
        scale: (min, max) zoom factor.
        degrees: maximum absolute rotation.
    """

    NUM_RANDOM = 4

    def __init__(self, pad: int = 0, jitter: float = 0.0, translate: float = 0.0,
                 scale: Sequence[float] = (1.0, 1.0), degrees: float = 0.0, pad_value: float = 0.5,
                 pad_fraction: float = 0.0) -> None:
        super().__init__()
        self.pad, self.jitter, self.translate = int(pad), float(jitter), float(translate)
        self.pad_fraction = float(pad_fraction)
        self.scale = (float(scale[0]), float(scale[1]))
        self.degrees, self.pad_value = float(degrees), float(pad_value)

    @property
    def is_identity(self) -> bool:
        return (self.pad == 0 and self.pad_fraction == 0 and self.jitter == 0 and self.translate == 0
                and self.scale == (1.0, 1.0) and self.degrees == 0)

    def forward(self, images: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        if self.is_identity or u is None:
            return images
        size = images.shape[-1]
        pad = self.pad + int(round(self.pad_fraction * size))
        x = F.pad(images, [pad] * 4, value=self.pad_value) if pad else images
        padded = x.shape[-1]
        u = u.to(images)
        max_shift = (self.jitter + self.translate * size) * 2.0 / padded  # in grid units
        tx, ty = (2 * u[:, 0] - 1) * max_shift, (2 * u[:, 1] - 1) * max_shift
        zoom = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 2]
        angle = (2 * u[:, 3] - 1) * math.radians(self.degrees)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # Output is the centre ``size`` crop of the padded canvas: shrink the grid by size/padded.
        crop = size / padded
        theta = torch.stack([
            torch.stack([cos * crop, -sin * crop, tx], -1),
            torch.stack([sin * crop, cos * crop, ty], -1),
        ], 1)
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
        # Constant-pad semantics outside the canvas: sample (x - v) with zero padding, add v back.
        out = F.grid_sample(x - self.pad_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out + self.pad_value
