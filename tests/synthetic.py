"""Synthetic natural images for the tiny test model: smooth class patterns with a spread of contrast."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIZE, CLASSES, PER_CLASS = 32, (0, 1, 2), 10


def pattern(c: int, contrast: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    """A smooth class-specific image; natural images of class c vary its contrast and brightness."""
    t = torch.linspace(0, 1, SIZE)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    base = torch.stack([torch.sin(2 * math.pi * (c + 1) * xx), torch.cos(2 * math.pi * (c + 1) * yy),
                        torch.sin(2 * math.pi * (xx + yy) * (3 - c))])
    return (0.5 + 0.35 * contrast * base + offset).clamp(0, 1)


def save(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


def natural_params(k: int) -> tuple[float, float]:
    """Contrast and brightness spread symmetrically around (1, 0) over the class's images."""
    u = (k + 0.5) / PER_CLASS - 0.5
    return 1.0 + 0.6 * u, 0.2 * ((k * 7 % PER_CLASS + 0.5) / PER_CLASS - 0.5)


def make_reference_folder(root: Path) -> Path:
    """``root/<class index>/<k>.png``: PER_CLASS natural images of each class in CLASSES."""
    for c in CLASSES:
        for k in range(PER_CLASS):
            save(root / str(c) / f"{k}.png", pattern(c, *natural_params(k)))
    return root
