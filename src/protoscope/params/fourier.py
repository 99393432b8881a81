"""Fourier parameterisation: the image's 2-D spectrum, scaled by 1/f^decay (Olah et al. 2017)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .base import ImageParam


def frequency_scale(size: int, decay: float) -> torch.Tensor:
    """1/f^decay for the rfft2 grid of a size x size image: [size, size//2+1]."""
    fy = torch.fft.fftfreq(size).view(-1, 1)
    fx = torch.fft.rfftfreq(size).view(1, -1)
    freq = torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / size)
    return freq.pow(-decay) * math.sqrt(size * size) / size


class FourierParam(ImageParam):
    """image = sigmoid(colour(irfft2(scale * spectrum))): low frequencies are cheap, noise is expensive."""

    def __init__(self, rows: int, channels: int, size: int, generators: Sequence[torch.Generator],
                 init_std: float = 0.01, decay: float = 1.0, decorrelate: bool = True) -> None:
        super().__init__(rows, channels, size, decorrelate)
        self.register_buffer("scale", frequency_scale(size, decay))
        self.spectrum = nn.Parameter(self.init_rows(generators, init_std))

    def param_shape(self) -> Sequence[int]:
        return (self.rows, self.channels, self.size, self.size // 2 + 1, 2)

    def forward(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        x = torch.fft.irfft2(spec, s=(self.size, self.size), norm="ortho")
        return self.to_rgb(x)

    @torch.no_grad()
    def set_images_(self, images: torch.Tensor) -> None:
        """The spectrum whose inverse transform is exactly the pre-sigmoid image of ``images``."""
        x = self.from_rgb(images.to(self.spectrum))
        spec = torch.fft.rfft2(x, norm="ortho") / self.scale
        self.spectrum.copy_(torch.view_as_real(spec))
