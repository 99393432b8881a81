"""Position-free, mask-weighted template matching: how well an image shows a mark anywhere in it.

One engine, :func:`correlation_map`: the weighted Pearson correlation of each image with a template at every
relative offset, all offsets at once with FFT cross-correlations (a direct convolution with a text-sized
kernel on 224 px images unfolds gigabytes). Offsets where the template overlaps the image by less than
``min_overlap`` of the largest overlap weight are skipped (``-inf``), so a few pixels at an edge cannot match
by chance; a flat image scores 0. Accumulated in float64. Two ways in:

:func:`best_match`  a mark (``pattern`` ``[C,h,w]``, paste weight ``mask`` ``[1,h,w]``): the template is what
    pasting does to grey, ``mask * (pattern - 0.5)``, with *balanced* weights (half on the mark's pixels, half
    on the unmarked ring of its window), so a thin, sparse mark such as text counts by its strokes against
    their surroundings; the image is padded by ``pad`` px of grey and the window must lie inside it.
:func:`template_match`  an intensity template ``[h,w]`` (e.g. rendered text) weighted by its support grown
    by ``ring`` px, against the images' channel mean, partial overlaps allowed (a patch holding part of it).

Score 1: the mark itself on any background; about 0: unrelated images.
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


def correlation_map(images: torch.Tensor, template: torch.Tensor, weight: torch.Tensor, min_overlap: float = 0.5,
                    eps: float = 1e-8, batch: int = 16) -> torch.Tensor:
    """``[N, H+h-1, W+w-1]`` weighted Pearson correlation of ``images`` ``[N,C,H,W]`` with ``template`` under
    ``weight`` (both ``[C,h,w]``, summed over channels) at every offset; entry ``(i, j)`` puts the template's
    top-left corner at image row ``i-h+1``, column ``j-w+1``. ``-inf`` where the overlap weight is below
    ``min_overlap`` of the largest, 0 where the image or the template is flat there."""
    t, w = template.double(), weight.double()
    h, wd = t.shape[-2:]
    height, width = images.shape[-2:]
    size = (height + 2 * (h - 1), width + 2 * (wd - 1))
    out = (height + h - 1, width + wd - 1)
    kernels = torch.fft.rfft2(torch.stack([w, w * t, w * t * t]), s=size).conj()  # [3, C, ...]

    def slide(inp: torch.Tensor, k: int) -> torch.Tensor:
        """Valid cross-correlation of ``inp`` ``[N,C,H',W']`` with kernel ``k``, summed over channels."""
        spectrum = (torch.fft.rfft2(inp, s=size) * kernels[k]).sum(1)
        return torch.fft.irfft2(spectrum, s=size)[:, :out[0], :out[1]]

    maps = []
    for start in range(0, len(images), batch):
        x = images[start:start + batch].detach().cpu().double()
        pad = (wd - 1, wd - 1, h - 1, h - 1)
        xp, vp = F.pad(x, pad), F.pad(torch.ones_like(x), pad)
        s0, sx, sxx = slide(vp, 0), slide(xp, 0), slide(xp * xp, 0)
        st, stt, sxt = slide(vp, 1), slide(vp, 2), slide(xp, 1)
        n = s0.clamp_min(eps)
        cov = sxt / n - sx * st / n**2
        var_x = (sxx / n - (sx / n) ** 2).clamp_min(0)
        var_t = (stt / n - (st / n) ** 2).clamp_min(0)
        flat = (var_x <= eps) | (var_t <= eps)
        corr = torch.where(flat, torch.zeros_like(cov), cov / (var_x * var_t).sqrt().clamp_min(eps))
        enough = s0 >= min_overlap * s0.amax((-2, -1), keepdim=True) - 1e-9
        maps.append(torch.where(enough, corr, torch.full_like(corr, -float("inf"))))
    return torch.cat(maps).float()


def balanced_weights(mask: torch.Tensor) -> torch.Tensor:
    """``[1,h,w]`` weights summing to 1: half on the mask (by its value), half on the unmasked ring."""
    mask = mask.double()
    ring = (mask <= 0).double()
    if float(ring.sum()) == 0 or float(mask.sum()) == 0:  # a mark covering its whole window
        return torch.ones_like(mask) / mask.numel()
    return 0.5 * mask / mask.sum() + 0.5 * ring / ring.sum()


def best_match(images: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor, pad: int = 4) -> Match:
    """The best weighted correlation of each of ``images`` ``[N,C,H,W]`` with the mark window (``pattern``
    ``[C,h,w]``, ``mask`` ``[1,h,w]``) at any position inside the image padded by ``pad`` px of grey."""
    if images.dim() != 4 or images.shape[1] != pattern.shape[0]:
        raise ConfigError(f"images {tuple(images.shape)} do not fit a mark with {pattern.shape[0]} channels")
    h, w = pattern.shape[-2:]
    if h > images.shape[-2] + 2 * pad or w > images.shape[-1] + 2 * pad:
        raise ConfigError(f"the mark's window {(h, w)} is larger than the images "
                          f"{tuple(images.shape[-2:])}: build the mark at the model's input size")
    channels = pattern.shape[0]
    template = mask.double() * (pattern.double() - 0.5)
    weights = balanced_weights(mask).expand(channels, -1, -1) / channels
    if float((weights * (template - (weights * template).sum()) ** 2).sum()) <= 1e-12:
        raise ConfigError("the mark does not differ from grey inside its window: a detector has nothing to match; "
                          "give it a colour other than 0.5 grey")
    x = F.pad(images.double(), (pad, pad, pad, pad), value=0.5) if pad else images
    corr = correlation_map(x, template, weights, min_overlap=1.0)  # the whole window inside the padded image
    best, where = corr.flatten(1).max(1)
    return Match(best, where // corr.shape[-1] - (h - 1) - pad, where % corr.shape[-1] - (w - 1) - pad)


def grown(mask: torch.Tensor, ring: int) -> torch.Tensor:
    """``[h, w]`` support of ``mask`` > 0 grown by ``ring`` pixels, as 0/1 floats."""
    support = (mask > 0).float()[None, None]
    if ring > 0:
        support = F.max_pool2d(support, 2 * ring + 1, stride=1, padding=ring)
    return support[0, 0]


def template_match(images: torch.Tensor, template: torch.Tensor, mask: torch.Tensor, ring: int = 3,
                   min_overlap: float = 0.5) -> torch.Tensor:
    """``[N]`` best mask-weighted correlation of the channel mean of ``images`` ``[N,C,H,W]`` (or ``[N,H,W]``)
    with an intensity ``template`` ``[h,w]`` (e.g. rendered text) over all positions, weighted by ``mask``
    grown by ``ring`` px; a partial overlap of at least ``min_overlap`` counts."""
    x = images.mean(1, keepdim=True) if images.dim() == 4 else images[:, None]
    corr = correlation_map(x, template[None], grown(mask, ring)[None], min_overlap)
    return corr.flatten(1).amax(1)
