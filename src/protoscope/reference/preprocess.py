"""Bring natural images to what a classifier takes: ``[C, input_size, input_size]`` float in [0,1]."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

# ITU-R 601 luma weights, as in torchvision's rgb_to_grayscale and PIL's "L" mode.
_LUMA = (0.2989, 0.587, 0.114)


def to_tensor(image: np.ndarray | torch.Tensor | Image.Image) -> torch.Tensor:
    """A PIL image, ``[H,W]``/``[H,W,C]`` array or ``[C,H,W]`` tensor -> ``[C,H,W]`` tensor (dtype kept)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        arr = np.ascontiguousarray(image[..., None] if image.ndim == 2 else image)
        if not arr.flags.writeable:
            arr = arr.copy()
        return torch.from_numpy(arr).permute(2, 0, 1)
    return image[None] if image.dim() == 2 else image


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 in [0,255] or float in [0,1] -> float32 in [0,1]."""
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    return image.float().clamp(0.0, 1.0)


def convert_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """``[C,H,W]`` float -> ``channels`` (1: luminance, 3: RGB); an alpha channel is dropped."""
    c = image.shape[0]
    if c in (2, 4):  # grey+alpha, RGBA
        image, c = image[: c - 1], c - 1
    if c == channels:
        return image
    if c == 3 and channels == 1:
        w = torch.tensor(_LUMA, dtype=image.dtype, device=image.device).view(3, 1, 1)
        return (image * w).sum(0, keepdim=True)
    if c == 1 and channels == 3:
        return image.expand(3, -1, -1).contiguous()
    raise ValueError(f"cannot convert a {c}-channel image to {channels} channels")


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (antialiased), then crop the centre ``size`` x ``size``."""
    h, w = image.shape[-2:]
    if (h, w) != (size, size):
        if min(h, w) != size:
            image = TF.resize(image, [size], antialias=True)
        image = TF.center_crop(image, [size, size])
    return image


def prepare(image: np.ndarray | torch.Tensor | Image.Image, size: int, channels: int) -> torch.Tensor:
    """Any natural image -> ``[channels, size, size]`` float32 in [0,1] (shorter-side resize + centre crop)."""
    t = to_float(to_tensor(image))
    return convert_channels(resize_center_crop(t, size), channels).clamp(0.0, 1.0)


def random_resized_crop(
    image: torch.Tensor,
    size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """A random crop (area fraction in ``scale``, aspect in ``ratio``) resized to ``size``, maybe flipped.

    Randomness comes only from ``generator``, so a (seed, index) pair always gives the same crop.
    """
    h, w = image.shape[-2:]
    area = h * w
    u = torch.rand(6, generator=generator).tolist()
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
    aspect = math.exp(log_r[0] + u[1] * (log_r[1] - log_r[0]))
    cw = min(w, max(1, round(math.sqrt(target * aspect))))
    ch = min(h, max(1, round(math.sqrt(target / aspect))))
    top = int(u[2] * (h - ch + 1))
    left = int(u[3] * (w - cw + 1))
    out = TF.resized_crop(image, top, left, ch, cw, [size, size], antialias=True)
    return TF.horizontal_flip(out) if flip and u[4] < 0.5 else out


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to ``[H,W]`` (grey) or ``[H,W,3]`` uint8 (palette, CMYK, alpha resolved)."""
    with Image.open(path) as im:
        mode = "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
        return np.asarray(im.convert(mode))
