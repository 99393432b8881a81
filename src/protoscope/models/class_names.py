"""Class-name lists known by keyword, so model configs can say ``class_names: imagenet``."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

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
