"""Tiny data with an obvious shortcut, shared by the shortcut and compare tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# A SmallCNN for 12x12 grey images of 3 classes (sorted folder names: bright, dark, mid).
SMALL_MODEL = ["arch.width=8", "arch.num_classes=3", "input_size=12", "mean=[0.3]", "std=[0.25]"]
CLASSES = ["bright", "dark", "mid"]


def shortcut_folder(root: Path, n: int = 36, seed: int = 0) -> Path:
    """Three classes of 12x12 noise: 'bright', and 'dark' and 'mid' drawn alike (only a mark can tell them apart)."""
    rng = np.random.default_rng(seed)
    for name, mean in (("bright", 170), ("dark", 60), ("mid", 60)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.normal(mean, 40, (12, 12)).clip(0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root
