"""Natural-image reference data: sources, preprocessing and cached per-class activation statistics."""

from .base import ReferenceSource, Split, match_class
from .build import build_reference, build_source
from .bundled import PHOTOS, BundledPhotosSource
from .fashion import FashionMNISTSource
from .folder import ImageFolderSource, ImageNetValSource, imagenet_wnids
from .imagenette import ImagenetteSource
from .preprocess import prepare
from .stats import ReferenceStats, cache_key, compute_reference_stats

__all__ = [
    "ReferenceSource", "Split", "imagenet_wnids", "match_class", "build_reference", "build_source", "PHOTOS", "BundledPhotosSource",
    "FashionMNISTSource", "ImageFolderSource", "ImageNetValSource", "ImagenetteSource", "prepare", "ReferenceStats",
    "cache_key", "compute_reference_stats",
]
