"""Class-name lists known by keyword, so model configs can say ``class_names: imagenet``."""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from typing import Sequence

from ..errors import ConfigError

FASHION_MNIST = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


@lru_cache(maxsize=None)
def imagenet() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in index order (shipped with torchvision)."""
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def named_class_list(spec: str | Sequence[str] | None, num_classes: int | None = None) -> list[str]:
    """Turn a model config's ``class_names`` into a list of names."""
    if spec is None:
        if num_classes is None:
            raise ValueError("class_names or num_classes must be given")
        return [f"class_{i}" for i in range(num_classes)]
    if isinstance(spec, str):
        known = {"imagenet": lambda: list(imagenet()), "fashion_mnist": lambda: list(FASHION_MNIST)}
        if spec not in known:
            raise ValueError(f"unknown class-name list {spec!r}; use one of {sorted(known)} or a list")
        return known[spec]()
    return [str(s) for s in spec]


def normalise_name(name: str) -> str:
    """Case-, space-, underscore- and dash-insensitive form of a class name."""
    return re.sub(r"[\s_\-/]+", " ", name).strip().lower()


def match_class(label: str, class_names: Sequence[str], allow_index: bool = True) -> int | None:
    """Index of ``label`` in ``class_names`` (exact, then normalised, then an integer index), else None.

    Raises :class:`ConfigError` when the label names several classes (ImageNet has two "crane"s).
    """
    for key in (lambda s: s, normalise_name):
        hits = [i for i, n in enumerate(class_names) if key(n) == key(label)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ConfigError(
                f"{label!r} names several classes of the model ({hits}): use the integer class index "
                "instead (e.g. rename the folder to that number)."
            )
    if allow_index and re.fullmatch(r"\d+", label.strip()):
        index = int(label)
        if index < len(class_names):
            return index
        raise ConfigError(f"class index {index} ({label!r}) is out of range: the model has {len(class_names)} classes")
    return None


def close_names(label: str, class_names: Sequence[str], n: int = 5) -> list[str]:
    """Up to ``n`` class names that look like ``label`` (difflib)."""
    by_norm = {normalise_name(c): c for c in class_names}
    return [by_norm[m] for m in difflib.get_close_matches(normalise_name(label), list(by_norm), n=n, cutoff=0.5)]
