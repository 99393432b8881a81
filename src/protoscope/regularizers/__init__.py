"""Regularisers: each returns a per-row loss of shape [R] (already multiplied by its weight)."""

from .natural import LayerBatchNormStats, PixelPrior
from .terms import BatchNormStats, Diversity, PixelL2, Regularizer, TotalVariation, roughness

__all__ = ["Regularizer", "TotalVariation", "PixelL2", "BatchNormStats", "Diversity", "roughness",
           "LayerBatchNormStats", "PixelPrior"]
