"""The paper's criterion: where a candidate falls among the natural images of its class.

Each natural image is scored against the mean of the *other* images of its class (leave-one-out, so it
is not compared with a mean that contains itself); each candidate is scored against the full class mean.
The percentile of a candidate is the share of natural images whose layer-mean score is worse than its
own (lower similarity, or higher distance), in [0, 100].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import Tensor

from ..errors import ReferenceDataError
from .similarity import (
    DEFAULT_MEASURES, DISTANCES, Path, Standardisation, check_path, concat_similarity, layer_standardisation,
    path_similarity, resolve_measures,
)

BAND_QUANTILES: tuple[float, ...] = (0.05, 0.5, 0.95)


def _class_label(class_name: str | int | None) -> str:
    return "this class" if class_name is None else f"class {class_name!r}"


def num_rows(path: Path, class_name: str | int | None = None) -> int:
    """Number of images in ``path`` (every layer must agree)."""
    counts = {n: t.shape[0] for n, t in path.items()}
    if len(set(counts.values())) > 1:
        raise ReferenceDataError(f"natural paths of {_class_label(class_name)} have different image counts per layer: {counts}")
    return next(iter(counts.values()), 0)


def class_mean_path(path: Path) -> dict[str, Tensor]:
    """Mean over images, per layer: layer -> ``[1, C]`` (float64)."""
    return {n: t.double().mean(0, keepdim=True) for n, t in path.items()}


def leave_one_out_means(natural_path: Path, class_name: str | int | None = None) -> dict[str, Tensor]:
    """Row ``i`` of each layer is the mean of all other images: ``(sum_j x_j - x_i) / (N - 1)`` (float64)."""
    n = num_rows(natural_path, class_name)
    if n < 2:
        raise ReferenceDataError(
            f"{_class_label(class_name)} has {n} natural reference image(s), but the leave-one-out percentile "
            "needs at least 2; add more reference images of this class and recompute the reference statistics"
        )
    return {k: (t.double().sum(0, keepdim=True) - t.double()) / (n - 1) for k, t in natural_path.items()}


def natural_scores(
    natural_path: Path,
    measures: str | Iterable[str] = DEFAULT_MEASURES,
    class_name: str | int | None = None,
) -> dict[str, Tensor]:
    """Per-layer score of each natural image against its leave-one-out class mean: measure -> ``[N, L]``."""
    natural64 = {k: t.double() for k, t in natural_path.items()}
    return path_similarity(natural64, leave_one_out_means(natural_path, class_name), measures)


def natural_concat_scores(
    natural_path: Path,
    measures: str | Iterable[str] = DEFAULT_MEASURES,
    class_name: str | int | None = None,
    standardisation: Standardisation | None = None,
) -> dict[str, Tensor]:
    """Concatenated-path score of each natural image against its leave-one-out class mean: measure -> ``[N]``.

    The standardisation is that of the full class mean (one fixed coordinate change per class)."""
    natural64 = {k: t.double() for k, t in natural_path.items()}
    if standardisation is None:
        standardisation = layer_standardisation(class_mean_path(natural_path))
    return concat_similarity(natural64, leave_one_out_means(natural_path, class_name), standardisation, measures)


def percentile_rank(candidate: Tensor, natural: Tensor, distance: bool) -> Tensor:
    """Share (in %) of ``natural [N]`` scores strictly worse than each ``candidate [M]`` score, ``[M]``."""
    ordered = natural.double().sort().values
    cand = candidate.double().contiguous()
    if distance:  # worse = larger distance
        worse = ordered.numel() - torch.searchsorted(ordered, cand, right=True)
    else:  # worse = smaller similarity
        worse = torch.searchsorted(ordered, cand, right=False)
    return 100.0 * worse.double() / max(ordered.numel(), 1)


def natural_band(scores: Tensor, quantiles: Sequence[float] = BAND_QUANTILES) -> Tensor:
    """Per-layer quantiles of natural scores ``[N, L]`` -> ``[Q, L]`` (default 5%, median, 95%)."""
    q = torch.tensor(list(quantiles), dtype=torch.float64)
    return torch.quantile(scores.double(), q, dim=0)


@dataclass(frozen=True)
class PercentileResult:
    """Percentiles of candidates of one class, with the per-layer scores they came from."""

    layer_names: tuple[str, ...]
    percentile: dict[str, Tensor]  # measure -> [M], in [0, 100]
    candidate_scores: dict[str, Tensor]  # measure -> [M, L], against the full class mean
    natural_scores: dict[str, Tensor]  # measure -> [N, L], against leave-one-out class means
    # the concatenated-path definition (see metrics.similarity.concat_similarity): measure -> [M] / [N]
    concat_percentile: dict[str, Tensor] = field(default_factory=dict)
    candidate_concat: dict[str, Tensor] = field(default_factory=dict)
    natural_concat: dict[str, Tensor] = field(default_factory=dict)

    def band(self, measure: str, quantiles: Sequence[float] = BAND_QUANTILES) -> Tensor:
        """Per-layer quantiles of the natural scores of ``measure``: ``[Q, L]``."""
        return natural_band(self.natural_scores[measure], quantiles)


def percentiles_from_scores(candidate_scores: dict[str, Tensor], nat_scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """Percentile per measure from per-layer scores (``[M, L]`` and ``[N, L]``), via their layer means."""
    return {
        m: percentile_rank(candidate_scores[m].mean(-1), nat_scores[m].mean(-1), m in DISTANCES)
        for m in candidate_scores
    }


def concat_percentiles(candidate_concat: dict[str, Tensor], natural_concat: dict[str, Tensor]) -> dict[str, Tensor]:
    """Percentile per measure of concatenated-path scores (``[M]`` among ``[N]``)."""
    return {m: percentile_rank(candidate_concat[m], natural_concat[m], m in DISTANCES) for m in candidate_concat}


def natural_percentile(
    natural_path: Path,
    candidate_path: Path,
    measures: str | Iterable[str] = DEFAULT_MEASURES,
    class_name: str | int | None = None,
) -> PercentileResult:
    """Percentile of each candidate (``[M, C]`` per layer) among the ``N >= 2`` natural images of its class."""
    measures = resolve_measures(measures)
    layers = check_path(candidate_path, natural_path)
    natural = {n: natural_path[n] for n in layers}
    nat = natural_scores(natural, measures, class_name)
    cand64 = {n: candidate_path[n].double() for n in layers}
    mean = class_mean_path(natural)
    cand = path_similarity(cand64, mean, measures)
    std = layer_standardisation(mean)
    cand_cat = concat_similarity(cand64, mean, std, measures)
    nat_cat = natural_concat_scores(natural, measures, class_name, std)
    return PercentileResult(tuple(layers), percentiles_from_scores(cand, nat), cand, nat,
                            concat_percentiles(cand_cat, nat_cat), cand_cat, nat_cat)
