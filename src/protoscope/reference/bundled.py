"""Offline photos bundled with scikit-image, scikit-learn and matplotlib, with their ImageNet labels.

One photo per class is a *small proxy* for a real class sample: each photo is expanded into
``crops_per_photo`` views (the centre crop, then random resized crops with random horizontal
flips, all from the reference ``seed``). Good enough for smoke runs and examples; use ``imagenet_val`` or
``image_folder`` for numbers you report.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..models.classifier import Classifier
from .base import ReferenceSource, match_class
from .preprocess import convert_channels, random_resized_crop, resize_center_crop, to_float, to_tensor


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        image = getattr(data, name)()
        return image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disp)

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


def _matplotlib(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data(name) as fh, Image.open(fh) as im:
            return np.asarray(im.convert("RGB"))

    return load


# photo key -> (ImageNet class name, loader). data.astronaut() is left out: no ImageNet class
# describes a portrait in a space suit.
PHOTOS: dict[str, tuple[str, Callable[[], np.ndarray]]] = {
    "chelsea": ("Egyptian cat", _skimage("chelsea")),
    "coffee": ("espresso", _skimage("coffee")),
    "rocket": ("missile", _skimage("rocket")),
    "motorcycle": ("moped", _skimage("stereo_motorcycle")),
    "china": ("palace", _sklearn("china.jpg")),
    "flower": ("daisy", _sklearn("flower.jpg")),
    "grace_hopper": ("military uniform", _matplotlib("grace_hopper.jpg")),
}
_PACKAGES = ("scikit-image", "scikit-learn", "matplotlib")


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


class BundledPhotosSource(ReferenceSource):
    """Offline photos labelled with ImageNet class names, each expanded into seeded random crops.

    ``photos`` selects photo keys of :data:`PHOTOS` (default: all); ``labels`` overrides the class
    name of a photo (for a classifier whose class names differ).
    """

    name = "bundled_photos"

    def __init__(self, crops_per_photo: int = 32, photos: Sequence[str] | None = None,
                 labels: dict[str, str] | None = None, scale: Sequence[float] = (0.35, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3)) -> None:
        keys = list(PHOTOS) if photos is None else [str(p) for p in photos]
        unknown = [k for k in keys + list(labels or {}) if k not in PHOTOS]
        if unknown:
            raise ConfigError(f"bundled_photos: unknown photo(s) {unknown}; choose from {list(PHOTOS)}")
        if crops_per_photo < 1:
            raise ConfigError(f"bundled_photos: crops_per_photo must be >= 1, got {crops_per_photo}")
        self.photos = keys
        self.labels = {k: (labels or {}).get(k, PHOTOS[k][0]) for k in keys}
        self.crops_per_photo = int(crops_per_photo)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self._cache: dict[str, torch.Tensor] = {}

    def options(self) -> dict[str, Any]:
        return {"labels": self.labels, "crops_per_photo": self.crops_per_photo,
                "scale": list(self.scale), "ratio": list(self.ratio)}

    def data_identity(self) -> Any:
        return {p: _version(p) for p in _PACKAGES}

    def photo(self, key: str) -> torch.Tensor:
        """The decoded photo as ``[C,H,W]`` float in [0,1] (decoded once)."""
        if key not in self._cache:
            self._cache[key] = to_float(to_tensor(PHOTOS[key][1]()))
        return self._cache[key]

    def candidates(self, classifier: Classifier, classes: set[int] | None, seed: int = 0) -> dict[int, list[Any]]:
        out: dict[int, list[Any]] = {}
        for key in self.photos:
            c = match_class(self.labels[key], classifier.class_names, allow_index=False)
            if c is not None and (classes is None or c in classes):
                out.setdefault(c, []).extend((key, i, int(seed)) for i in range(self.crops_per_photo))
        return out

    def load(self, item: Any, classifier: Classifier) -> torch.Tensor:
        key, index, seed = item
        image, size = self.photo(key), classifier.input_size
        if index == 0:
            view = resize_center_crop(image, size)
        else:
            h = hashlib.sha256(f"{seed}:{key}:{index}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(h[:8], "little") >> 1)
            view = random_resized_crop(image, size, gen, self.scale, self.ratio)
        return convert_channels(view, classifier.channels).clamp(0.0, 1.0)

    def empty_hint(self, class_index: int, classifier: Classifier) -> str:
        have = sorted(set(self.labels.values()))
        return (f"the bundled photos show only {have}; choose one of those classes, relabel a photo with "
                "reference.labels, or use reference=image_folder")
