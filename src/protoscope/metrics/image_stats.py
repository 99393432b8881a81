"""Pixel statistics that show whether an image looks like a photo, next to the path metrics.

Each is computed per image on x in [0,1]^{C x H x W} (what the model sees before its normalisation):

* ``clipped``: share of values (over channels and pixels) within half a grey level of 0 or 1, i.e.
  x <= 0.5/255 or x >= 1 - 0.5/255 (saturated pixels, frequent in feature visualisations);
* ``mean``: mean value over channels and pixels (overall brightness);
* ``spread``: mean over channels of each channel's standard deviation over pixels (colour spread);
* ``hf_energy``: high-frequency energy, mean_{c,i,j} (x_{c,i+1,j} - x_{c,i,j})^2 + mean_{c,i,j}
  (x_{c,i,j+1} - x_{c,i,j})^2 (the squared-neighbour sum that L_hf penalises, without weight or unit).
"""

from __future__ import annotations

import torch
from torch import Tensor

IMAGE_STATS: tuple[str, ...] = ("clipped", "mean", "spread", "hf_energy")
CLIP_MARGIN = 0.5 / 255


def image_statistics(images: Tensor) -> dict[str, Tensor]:
    """``images [B, C, H, W]`` in [0,1] -> statistic name -> ``[B]`` (float64), see the module doc."""
    if images.dim() != 4:
        raise ValueError(f"image statistics need images [B, C, H, W], got shape {tuple(images.shape)}")
    x = images.detach().double()
    clipped = ((x <= CLIP_MARGIN) | (x >= 1 - CLIP_MARGIN)).double().flatten(1).mean(1)
    vertical = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).flatten(1).mean(1)
    horizontal = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).mean(1)
    return {
        "clipped": clipped,
        "mean": x.flatten(1).mean(1),
        "spread": x.flatten(2).std(-1, unbiased=False).mean(1),
        "hf_energy": vertical + horizontal,
    }
