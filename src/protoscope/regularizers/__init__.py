"""Regularisers: each returns a per-row loss of shape [R] (already multiplied by its weight)."""

from .terms import BatchNormStats, Blur, PixelL2, Regularizer, TotalVariation

__all__ = ["Regularizer", "TotalVariation", "PixelL2", "Blur", "BatchNormStats"]
