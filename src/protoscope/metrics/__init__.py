"""Metrics of activation paths: per-layer similarity, the natural-image percentile, and torchmetrics wrappers;\nthe ROC AUC of a score between two groups (:mod:`.ranking`)."""

from .confidence import TargetScores, target_scores
from .diversity import seed_distance
from .path_metrics import NaturalPercentile, PathSimilarity, TargetConfidence
from .percentile import (
    BAND_QUANTILES,
    PercentileResult,
    class_mean_path,
    concat_percentiles,
    leave_one_out_means,
    natural_band,
    natural_concat_scores,
    natural_percentile,
    natural_scores,
    percentile_rank,
)
from .ranking import roc_auc
from .similarity import (
    DEFAULT_MEASURES,
    DISTANCES,
    MEASURES,
    concat_path,
    concat_similarity,
    cosine,
    layer_mean,
    layer_standardisation,
    normalised_l1,
    path_similarity,
    pearson,
    resolve_measures,
    spearman,
)

__all__ = [
    "TargetScores", "target_scores", "seed_distance", "roc_auc",
    "MEASURES", "DISTANCES", "DEFAULT_MEASURES", "BAND_QUANTILES",
    "spearman", "pearson", "cosine", "normalised_l1", "resolve_measures",
    "path_similarity", "layer_mean", "layer_standardisation", "concat_path",
    "concat_similarity", "natural_concat_scores", "concat_percentiles",
    "PercentileResult", "class_mean_path", "leave_one_out_means", "natural_scores", "percentile_rank",
    "natural_percentile", "natural_band",
    "PathSimilarity", "NaturalPercentile", "TargetConfidence",
]
