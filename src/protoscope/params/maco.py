"""MACO-style parameterisation (Fel et al. 2023): only the Fourier phase is optimised; the magnitude
spectrum is fixed. Data-free here: the magnitude is the 1/f^decay power law, not a spectrum measured on
natural images."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .base import ImageParam
from .fourier import frequency_scale


class MacoParam(ImageParam):
    """image = sigmoid(colour(std * standardise(irfft2(|F| * exp(i * phase))))), ``|F|`` = 1/f^decay.

    Each row and channel is standardised to zero mean and unit variance before the colour mixing,
    then multiplied by ``std`` (the pre-sigmoid contrast). ``set_images_`` (used by blur) keeps the
    fixed magnitude and takes the phase of the given images, so it represents them only approximately.
    """

    def __init__(self, rows: int, channels: int, size: int, generators: Sequence[torch.Generator],
                 decay: float = 1.0, std: float = 1.0, decorrelate: bool = True) -> None:
        super().__init__(rows, channels, size, decorrelate)
        self.register_buffer("magnitude", frequency_scale(size, decay))
        self.std = float(std)
        shape = (channels, size, size // 2 + 1)
        self.phase = nn.Parameter(torch.stack([(torch.rand(*shape, generator=g) * 2 - 1) * math.pi
                                               for g in generators]))

    def param_shape(self) -> Sequence[int]:
        return (self.rows, self.channels, self.size, self.size // 2 + 1)

    def forward(self) -> torch.Tensor:
        spec = torch.polar(self.magnitude.expand_as(self.phase), self.phase)
        x = torch.fft.irfft2(spec, s=(self.size, self.size), norm="ortho")
        x = (x - x.mean((-2, -1), keepdim=True)) / x.std((-2, -1), keepdim=True).clamp_min(1e-8)
        return self.to_rgb(self.std * x)

    @torch.no_grad()
    def set_images_(self, images: torch.Tensor) -> None:
        x = self.from_rgb(images.to(self.phase))
        self.phase.copy_(torch.angle(torch.fft.rfft2(x, norm="ortho")))
