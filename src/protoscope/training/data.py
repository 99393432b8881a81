"""In-memory data modules: Fashion-MNIST and a folder of class sub-folders."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ..errors import ConfigError, ReferenceDataError
from ..reference.folder import IMAGE_EXTENSIONS
from ..reference.preprocess import prepare
from ..reference.preprocess import read_image as read_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = IMAGE_EXTENSIONS
Split = tuple[torch.Tensor, torch.Tensor]


def _subset(split: Split, limit: int | None, generator: torch.Generator) -> Split:
    """A random subset of at most ``limit`` samples (all of them for ``None``)."""
    images, labels = split
    if limit is None or limit >= len(labels):
        return images, labels
    if limit < 1:
        raise ConfigError(f"sample limits must be positive, got {limit}")
    keep = torch.randperm(len(labels), generator=generator)[:limit]
    return images[keep], labels[keep]


def fit_images(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """uint8 [N,C,H,W] -> uint8 [N,channels,size,size] (bilinear resize, grey<->RGB conversion)."""
    if images.shape[1] != channels:
        if images.shape[1] == 1:
            images = images.expand(-1, channels, -1, -1)
        elif channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).byte()
        else:
            raise ConfigError(f"cannot convert {images.shape[1]}-channel images to {channels} channels")
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        images = images.round().clamp(0, 255).byte()
    return images.contiguous()


class TensorDataModule(pl.LightningDataModule):
    """Holds train/val/test splits as uint8 image tensors and int64 labels in memory.

    Subclasses implement :meth:`load_splits`. The test split defaults to the validation split.
    """

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        limit_train_samples: int | None = None,
        limit_eval_samples: int | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.limit_train_samples = limit_train_samples
        self.limit_eval_samples = limit_eval_samples
        self.splits: dict[str, Split] = {}

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def test_split_name(self) -> str:
        """Which data the test metrics are computed on."""
        return "test"

    def load_splits(self) -> dict[str, Split]:
        """Return ``{"train": ..., "val": ..., "test"?: ...}`` as uint8/int64 tensors."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits = self.load_splits()
        splits.setdefault("test", splits["val"])
        g = torch.Generator().manual_seed(self.seed + 1)
        self.splits = {
            name: _subset(split, self.limit_train_samples if name == "train" else self.limit_eval_samples, g)
            for name, split in splits.items()
        }
        log.info("data: %s", {k: len(v[1]) for k, v in self.splits.items()})

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            TensorDataset(*self.splits[name]),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            generator=g if shuffle else None,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class FashionMNISTData(TensorDataModule):
    """Fashion-MNIST from disk: ``val_size`` training images held out, the 10k test set for testing."""

    def __init__(
        self,
        root: str | None = None,
        val_size: int = 5000,
        input_size: int = 28,
        channels: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        from ..data.fashion_mnist import fashion_mnist_root

        self.root = fashion_mnist_root(root)  # fails early, with install advice, when missing
        self.val_size = val_size
        self.input_size = input_size
        self.channels = channels

    @property
    def class_names(self) -> list[str]:
        from ..models.class_names import FASHION_MNIST

        return list(FASHION_MNIST)

    def load_splits(self) -> dict[str, Split]:
        from ..data.fashion_mnist import load_fashion_mnist

        images, labels = load_fashion_mnist("train", self.root)
        if not 0 < self.val_size < len(labels):
            raise ConfigError(f"train_data.val_size must be between 1 and {len(labels) - 1}, got {self.val_size}")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        val, train = order[: self.val_size], order[self.val_size :]
        test_images, test_labels = load_fashion_mnist("test", self.root)
        fit = lambda x: fit_images(x, self.input_size, self.channels)  # noqa: E731
        return {
            "train": (fit(images[train]), labels[train]),
            "val": (fit(images[val]), labels[val]),
            "test": (fit(test_images), test_labels),
        }


def scan_image_folder(root: str | os.PathLike | None) -> dict[str, list[Path]]:
    """``{class name: image files}`` for ``root/<class>/*.<image suffix>``, classes sorted by name."""
    if root in (None, "", "???"):
        raise ConfigError("train_data.root is not set: pass train_data.root=/path/to/folder with one sub-folder per class")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ReferenceDataError(f"image folder {base} does not exist (train_data.root)")
    classes = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ReferenceDataError(
            f"image folder {base} has no class sub-folders: expected {base}/<class name>/<image files>"
        )
    if len(classes) < 2:
        raise ReferenceDataError(f"image folder {base} has only one class folder ({classes[0].name}); need 2 or more")
    found: dict[str, list[Path]] = {}
    for folder in classes:
        files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ReferenceDataError(
                f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); add images or remove it"
            )
        found[folder.name] = files
    return found


def read_image(path: Path, size: int, channels: int) -> torch.Tensor:
    """One image file -> uint8 [channels, size, size]: shorter side resized to ``size``, centre crop."""
    try:
        image = prepare(read_file(path), size, channels)
    except OSError as exc:
        raise ReferenceDataError(f"cannot read image {path}: {exc}") from exc
    return (image * 255).round().byte()


class ImageFolderData(TensorDataModule):
    """``root/<class>/*.png|jpg|...`` split per class into train and ``val_fraction`` validation images.

    Class names are the sorted folder names; the test metrics are computed on the validation split.
    """

    def __init__(
        self,
        root: str | None = None,
        val_fraction: float = 0.2,
        input_size: int = 28,
        channels: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if channels not in (1, 3):
            raise ConfigError(f"image_folder supports 1 or 3 channels (model.channels), got {channels}")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"train_data.val_fraction must be in (0, 1), got {val_fraction}")
        self.files = scan_image_folder(root)  # fails early on bad folders
        self.val_fraction = val_fraction
        self.input_size = input_size
        self.channels = channels

    @property
    def class_names(self) -> list[str]:
        return list(self.files)

    @property
    def test_split_name(self) -> str:
        return "val"

    def load_splits(self) -> dict[str, Split]:
        g = torch.Generator().manual_seed(self.seed)
        parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"train": [], "val": []}
        for label, files in enumerate(self.files.values()):
            images = torch.stack([read_image(f, self.input_size, self.channels) for f in files])
            order = torch.randperm(len(files), generator=g)
            n_val = min(len(files) - 1, max(1, round(self.val_fraction * len(files)))) if len(files) > 1 else 0
            for name, idx in (("val", order[:n_val]), ("train", order[n_val:])):
                parts[name].append((images[idx], torch.full((len(idx),), label, dtype=torch.int64)))
        if not any(len(lbl) for _, lbl in parts["val"]):
            raise ReferenceDataError("image folder too small: every class has a single image, nothing to validate on")
        return {name: (torch.cat([p[0] for p in ps]), torch.cat([p[1] for p in ps])) for name, ps in parts.items()}
