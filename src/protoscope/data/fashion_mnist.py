"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (read from disk, no download)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ReferenceDataError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
_FILES = {"train": "train", "test": "t10k"}


def fashion_mnist_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the idx files: ``root``, ``$FASHION_MNIST_DIR`` or the Debian location."""
    path = Path(root or os.environ.get("FASHION_MNIST_DIR") or DEFAULT_ROOT)
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        raise ReferenceDataError(
            f"Fashion-MNIST not found in {path}. Install it with `apt-get install dataset-fashion-mnist` "
            "(Debian/Ubuntu), or set FASHION_MNIST_DIR to a folder with the four *-ubyte.gz files."
        )
    return path


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 [N, 1, 28, 28] and labels as int64 [N] of the ``train`` (60k) or ``test`` (10k) split."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    base = fashion_mnist_root(root)
    prefix = _FILES[split]
    with gzip.open(base / f"{prefix}-labels-idx1-ubyte.gz", "rb") as fh:
        labels = np.frombuffer(fh.read(), dtype=np.uint8, offset=8)
    with gzip.open(base / f"{prefix}-images-idx3-ubyte.gz", "rb") as fh:
        images = np.frombuffer(fh.read(), dtype=np.uint8, offset=16).reshape(len(labels), 1, 28, 28)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
