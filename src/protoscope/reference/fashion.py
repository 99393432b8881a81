"""Fashion-MNIST as a reference source (read from the Debian package, never downloaded)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..data.fashion_mnist import fashion_mnist_root, load_fashion_mnist
from ..errors import ConfigError
from ..models.class_names import FASHION_MNIST
from ..models.classifier import Classifier
from .base import ReferenceSource, match_class
from .preprocess import prepare


class FashionMNISTSource(ReferenceSource):
    """Fashion-MNIST images of one split (``test`` by default: images the classifier did not train on).

    Labels map to the classifier's classes by name when it uses the Fashion-MNIST names, else by
    index when it has exactly 10 classes.
    """

    name = "fashion_mnist"

    def __init__(self, split: str = "test", root: str | os.PathLike | None = None) -> None:
        if split not in ("train", "test"):
            raise ConfigError(f"fashion_mnist: split must be 'train' or 'test', got {split!r}")
        self.split = split
        self.root = root
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None

    def options(self) -> dict[str, Any]:
        return {"split": self.split}

    def data_identity(self) -> Any:
        base = fashion_mnist_root(self.root)
        files = sorted(p for p in Path(base).iterdir() if p.name.endswith("-ubyte.gz"))
        return {"root": str(base.resolve()), "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]}

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images ``[N,1,28,28]`` and labels ``[N]`` (loaded once)."""
        if self._data is None:
            self._data = load_fashion_mnist(self.split, self.root)
        return self._data

    def label_map(self, classifier: Classifier) -> list[int]:
        """Classifier class index of each Fashion-MNIST label 0..9."""
        by_name = [match_class(n, classifier.class_names, allow_index=False) for n in FASHION_MNIST]
        if all(i is not None for i in by_name):
            return by_name  # type: ignore[return-value]
        if classifier.num_classes == len(FASHION_MNIST):
            return list(range(len(FASHION_MNIST)))
        raise ConfigError(
            f"fashion_mnist: model {classifier.name} has {classifier.num_classes} classes and not the "
            f"Fashion-MNIST class names {FASHION_MNIST}; use a 10-class Fashion-MNIST model (model=fashion_cnn)."
        )

    def candidates(self, classifier: Classifier, classes: set[int] | None, seed: int = 0) -> dict[int, list[Any]]:
        _, labels = self.data()
        mapping = self.label_map(classifier)
        out: dict[int, list[Any]] = {}
        for label, c in enumerate(mapping):
            if classes is None or c in classes:
                out[c] = torch.nonzero(labels == label).flatten().tolist()
        return out

    def load(self, item: Any, classifier: Classifier) -> torch.Tensor:
        return prepare(self.data()[0][item], classifier.input_size, classifier.channels)

    def empty_hint(self, class_index: int, classifier: Classifier) -> str:
        return "Fashion-MNIST has only its 10 classes: drop the class or use reference=image_folder"

    def __getstate__(self) -> dict:  # DataLoader workers reload the arrays instead of pickling them
        return {**self.__dict__, "_data": None}
