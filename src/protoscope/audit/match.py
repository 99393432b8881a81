"""Position-free, mask-weighted correlation of images with a template (a mark, rendered text).

Thin, sparse marks such as text fill a small part of any window, so a plain correlation over a window is
dominated by the background. Here each template pixel carries a weight (its mask grown by a few pixels: the
strokes and their immediate surround), and the weighted Pearson correlation is taken at every relative
offset of template and image; the score is the best one. Offsets where the template overlaps the image by
less than ``min_overlap`` of the largest possible overlap weight are skipped, so a few pixels at an edge
cannot match by chance. All offsets are computed at once with FFT cross-correlations (a direct convolution
with a text-sized kernel unfolds gigabytes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grown(mask: torch.Tensor, ring: int) -> torch.Tensor:
    """``[h, w]`` support of ``mask`` > 0 grown by ``ring`` pixels, as 0/1 floats."""
    support = (mask > 0).float()[None, None]
    if ring > 0:
        support = F.max_pool2d(support, 2 * ring + 1, stride=1, padding=ring)
    return support[0, 0]


def correlation_map(images: torch.Tensor, template: torch.Tensor, weight: torch.Tensor,
                    min_overlap: float = 0.5, eps: float = 1e-8) -> torch.Tensor:
    """``[N, H+h-1, W+w-1]`` weighted Pearson correlation of ``images`` ``[N,H,W]`` (or ``[N,C,H,W]``: the
    channel mean) with ``template`` ``[h,w]`` under ``weight`` ``[h,w]`` at every offset; ``-inf`` where the
    overlap is too small or either side is flat."""
    x = images.double()
    if x.dim() == 4:
        x = x.mean(1)
    t, w = template.double(), weight.double()
    h, wd = t.shape
    pad = (wd - 1, wd - 1, h - 1, h - 1)
    xp = F.pad(x[:, None], pad)
    vp = F.pad(torch.ones_like(x[:, None]), pad)

    size = xp.shape[-2:]
    out = (size[0] - h + 1, size[1] - wd + 1)

    def slide(inp: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """Valid cross-correlation of ``inp`` ``[N,1,H',W']`` with ``kernel``: ``[N, H'-h+1, W'-w+1]``."""
        spectrum = torch.fft.rfft2(inp[:, 0], s=size) * torch.fft.rfft2(kernel, s=size).conj()
        return torch.fft.irfft2(spectrum, s=size)[:, :out[0], :out[1]]

    s0 = slide(vp, w)
    sx, sxx = slide(xp, w), slide(xp * xp, w)
    st, stt = slide(vp, w * t), slide(vp, w * t * t)
    sxt = slide(xp, w * t)
    n = s0.clamp_min(eps)
    cov = sxt / n - sx * st / n**2
    var_x = (sxx / n - (sx / n) ** 2).clamp_min(0)
    var_t = (stt / n - (st / n) ** 2).clamp_min(0)
    corr = cov / (var_x * var_t).sqrt().clamp_min(eps)
    valid = (s0 >= min_overlap * s0.amax((-2, -1), keepdim=True)) & (var_x > eps) & (var_t > eps)
    return torch.where(valid, corr, torch.full_like(corr, -float("inf"))).float()


def best_match(images: torch.Tensor, template: torch.Tensor, mask: torch.Tensor, ring: int = 3,
               min_overlap: float = 0.5) -> torch.Tensor:
    """``[N]`` best mask-weighted correlation over all positions of ``template`` (intensity ``[h,w]``, e.g.
    the mark's alpha) within its ``mask`` grown by ``ring`` px; 1 for an image that contains the template."""
    corr = correlation_map(images, template, grown(mask, ring), min_overlap)
    return corr.flatten(1).amax(1)
