"""Pixel parameterisation: one free value per pixel and channel."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import ImageParam


class PixelParam(ImageParam):
    """image = sigmoid(colour(x)), with x [R,C,H,W] initialised from N(0, init_std²) per row."""

    def __init__(self, rows: int, channels: int, size: int, generators: Sequence[torch.Generator],
                 init_std: float = 0.5, decorrelate: bool = True) -> None:
        super().__init__(rows, channels, size, decorrelate)
        self.x = nn.Parameter(self.init_rows(generators, init_std))

    def param_shape(self) -> Sequence[int]:
        return (self.rows, self.channels, self.size, self.size)

    def forward(self) -> torch.Tensor:
        return self.to_rgb(self.x)

    @torch.no_grad()
    def set_images_(self, images: torch.Tensor) -> None:
        self.x.copy_(self.from_rgb(images.to(self.x)))
