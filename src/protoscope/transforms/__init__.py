"""Random robustness transforms applied to every row independently, in one batched op."""

from .affine import RandomAffine

__all__ = ["RandomAffine"]
