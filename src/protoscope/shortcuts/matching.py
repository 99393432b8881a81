"""Position-free, mask-weighted template matching: how well an image shows a mark anywhere in it.

The template is what pasting the mark does to a grey image, ``t = mask * (pattern - 0.5)``, inside the
mark's window (its mask's bounding box grown by a ring). At every position the score is the weighted
Pearson correlation between the image patch and ``t`` with *balanced* weights: half of the weight on
the mark's pixels (in proportion to the mask), half on the ring of unmarked pixels around them. A thin,
sparse mark such as text therefore counts by its strokes against their immediate surroundings, not
drowned in the background of its bounding box. The score is the best over all positions (the image
padded by ``pad`` px of grey, so a mark as large as the image may still move, and a mark in a corner
keeps a contrasting ring). 1: the mark
itself on any background; about 0: unrelated images. Accumulated in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError


@dataclass
class Match:
    score: torch.Tensor  # [N] best weighted correlation
    top: torch.Tensor  # [N] row of the best window's top-left corner (in the unpadded image; may be < 0)
    left: torch.Tensor  # [N] its column


def balanced_weights(mask: torch.Tensor) -> torch.Tensor:
    """``[1,h,w]`` weights summing to 1: half on the mask (by its value), half on the unmasked ring."""
    mask = mask.double()
    ring = (mask <= 0).double()
    if float(ring.sum()) == 0 or float(mask.sum()) == 0:  # a mark covering its whole window
        return torch.ones_like(mask) / mask.numel()
    return 0.5 * mask / mask.sum() + 0.5 * ring / ring.sum()


def best_match(images: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor, pad: int = 4,
               batch: int = 16) -> Match:
    """The best weighted correlation of each of ``images`` ``[N,C,H,W]`` with the mark window (``pattern``
    ``[C,h,w]``, ``mask`` ``[1,h,w]``) over all positions."""
    if images.dim() != 4 or images.shape[1] != pattern.shape[0]:
        raise ConfigError(f"images {tuple(images.shape)} do not fit a mark with {pattern.shape[0]} channels")
    if pattern.shape[-2] > images.shape[-2] + 2 * pad or pattern.shape[-1] > images.shape[-1] + 2 * pad:
        raise ConfigError(f"the mark's window {tuple(pattern.shape[-2:])} is larger than the images "
                          f"{tuple(images.shape[-2:])}: build the mark at the model's input size")
    channels = pattern.shape[0]
    weights = balanced_weights(mask).expand(channels, -1, -1) / channels  # [C,h,w], sums to 1
    template = mask.double() * (pattern.double() - 0.5)
    centred = template - (weights * template).sum()
    var_t = float((weights * centred ** 2).sum())
    if var_t <= 1e-12:
        raise ConfigError("the mark does not differ from grey inside its window: a detector has nothing to match; "
                          "give it a colour other than 0.5 grey")
    kernel_w, kernel_t = weights[None], (weights * centred)[None]
    scores, tops, lefts = [], [], []
    for start in range(0, len(images), batch):
        x = images[start:start + batch].detach().cpu().double()
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), value=0.5)
        mean = F.conv2d(x, kernel_w)
        var_x = (F.conv2d(x * x, kernel_w) - mean * mean).clamp_min(0)
        cov = F.conv2d(x, kernel_t)
        corr = torch.where(var_x > 1e-10, cov / (var_x * var_t).sqrt().clamp_min(1e-12), torch.zeros_like(cov))
        flat = corr.flatten(1)
        best, where = flat.max(1)
        width = corr.shape[-1]
        scores.append(best)
        tops.append(where // width - pad)
        lefts.append(where % width - pad)
    return Match(torch.cat(scores).float(), torch.cat(tops), torch.cat(lefts))
