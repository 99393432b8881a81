"""torchmetrics wrappers of the path measures that give the same values in one process or many.

Row-wise states are kept as flat 1-D tensors in the metric's dtype (``dist_reduce_fx="cat"``), so a
rank that saw no rows (its empty state is a 1-D tensor) still gathers with ranks that did. Rows keep
their class id, so percentiles are computed after the sync, whichever rank held which rows.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Iterable, Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..errors import ConfigError, ProtoscopeError, ReferenceDataError
from .confidence import target_scores
from .percentile import (
    PercentileResult, class_mean_path, concat_percentiles, natural_concat_scores, natural_scores,
    percentiles_from_scores,
)
from .similarity import DEFAULT_MEASURES, Path, concat_similarity, layer_standardisation, path_similarity, resolve_measures


def _cat(state: list[Tensor] | Tensor, dtype: torch.dtype) -> Tensor:
    """A cat-state as one tensor: a list in a single process, a tensor after a sync, maybe empty."""
    if isinstance(state, list) and not state:
        return torch.zeros(0, dtype=dtype)
    return dim_zero_cat(state)


def _select(path: Path, layers: Sequence[str]) -> dict[str, Tensor]:
    """The metric's layers of ``path``, in float64 (every score is computed in double precision)."""
    missing = [n for n in layers if n not in path]
    if missing:
        raise ConfigError(f"activation path lacks layer(s) {missing} (it has {list(path)}); record the metric's layers")
    return {n: path[n].double() for n in layers}


class _RowMetric(Metric):
    """Shared set-up: layer names, measures, and per-row scores stored flat as ``[R * K * L]``."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, layer_names: Sequence[str], measures: str | Iterable[str] = DEFAULT_MEASURES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not layer_names:
            raise ConfigError("a path metric needs at least one layer name")
        self.layer_names = tuple(layer_names)
        self.measures = resolve_measures(measures)

    def _scores(self, candidate_path: Path, reference_path: Path) -> Tensor:
        """Per-layer scores ``[B, K, L]`` of the metric's layers and measures."""
        sims = path_similarity(_select(candidate_path, self.layer_names), reference_path, self.measures)
        return torch.stack([sims[m] for m in self.measures], dim=1)

    def _concat_scores(self, candidate_path: Path, reference_path: Path) -> Tensor:
        """Concatenated-path scores ``[B, K]``, standardised by the reference (class-mean) rows."""
        ref = _select(reference_path, self.layer_names)
        sims = concat_similarity(_select(candidate_path, self.layer_names), ref, layer_standardisation(ref), self.measures)
        return torch.stack([sims[m] for m in self.measures], dim=1)

    def _rows(self, state: list[Tensor] | Tensor) -> Tensor:
        """A flat score state back as ``[R, K, L]``."""
        return _cat(state, self.dtype).reshape(-1, len(self.measures), len(self.layer_names))

    def _concat_rows(self, state: list[Tensor] | Tensor) -> Tensor:
        """A flat concatenated-score state back as ``[R, K]``."""
        return _cat(state, self.dtype).reshape(-1, len(self.measures))

    def _synced(self) -> ContextManager[None]:
        """Context in which states are gathered from all processes (no-op if already synced or single-process)."""
        if self._is_synced:
            return nullcontext()
        return self.sync_context(should_sync=self._to_sync, should_unsync=self._should_unsync)


class PathSimilarity(_RowMetric):
    """Similarity of candidate paths to reference (class-mean) paths, per measure and layer.

    ``compute()`` returns ``{f"{measure}/{layer}": mean over rows, f"{measure}/mean": mean over rows of
    the layer mean, f"{measure}/concat": mean over rows of the concatenated-path score}``;
    ``per_row()`` returns ``{measure: [R, L]}``.
    """

    def __init__(self, layer_names: Sequence[str], measures: str | Iterable[str] = DEFAULT_MEASURES, **kwargs: Any) -> None:
        super().__init__(layer_names, measures, **kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("concat", default=[], dist_reduce_fx="cat")

    def update(self, candidate_path: Path, reference_mean_path: Path) -> None:
        """Add rows: ``candidate_path`` layer -> ``[B, C]``; the reference is ``[B, C]``, ``[1, C]`` or ``[C]``."""
        self.scores.append(self._scores(candidate_path, reference_mean_path).to(self.dtype).flatten())
        self.concat.append(self._concat_scores(candidate_path, reference_mean_path).to(self.dtype).flatten())

    def _per_row(self) -> dict[str, Tensor]:
        rows = self._rows(self.scores)
        return {m: rows[:, k] for k, m in enumerate(self.measures)}

    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for m, s in self._per_row().items():
            out.update({f"{m}/{n}": s[:, j].mean() for j, n in enumerate(self.layer_names)})
            out[f"{m}/mean"] = s.mean(-1).mean()
        cat = self._concat_rows(self.concat)
        out.update({f"{m}/concat": cat[:, k].mean() for k, m in enumerate(self.measures)})
        return out

    def per_row(self) -> dict[str, Tensor]:
        """Per-row, per-layer scores of all processes: measure -> ``[R, L]``."""
        with self._synced():
            return {m: s.clone() for m, s in self._per_row().items()}


class NaturalPercentile(_RowMetric):
    """Percentile of candidates among the natural images of their class (the paper's criterion).

    Per class, call ``add_natural(natural_path, class_id)`` with *all* its natural images (on every rank
    that scores candidates of that class, or pass ``class_mean_path`` to ``update``), then
    ``update(candidate_path, class_ids)``. Natural rows added for the same class on several ranks are
    counted once (those of the lowest rank are kept). ``compute()`` returns
    ``{f"{measure}/percentile": mean percentile, f"{measure}/score": mean layer-mean score}`` over candidates,
    and the same for the concatenated-path definition (``{measure}/concat_percentile``, ``{measure}/concat_score``).
    """

    def __init__(
        self,
        layer_names: Sequence[str],
        measures: str | Iterable[str] = DEFAULT_MEASURES,
        class_names: Sequence[str] | Mapping[int, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(layer_names, measures, **kwargs)
        self.class_names = class_names
        self._class_means: dict[int, dict[str, Tensor]] = {}
        for name in ("cand_scores", "cand_class", "nat_scores", "nat_class", "nat_rank", "cand_concat", "nat_concat"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def _name(self, class_id: int) -> str | int:
        try:
            return self.class_names[class_id] if self.class_names is not None else class_id
        except (IndexError, KeyError):
            return class_id

    def add_natural(self, natural_path: Path, class_id: int) -> None:
        """Score every natural image of ``class_id`` against its leave-one-out class mean (needs N >= 2)."""
        class_id = int(class_id)
        if class_id in self._class_means:
            raise ProtoscopeError(f"natural images of class {self._name(class_id)!r} were already added; call reset() first")
        natural = _select(natural_path, self.layer_names)
        mean = class_mean_path(natural)
        nat = natural_scores(natural, self.measures, self._name(class_id))
        rows = torch.stack([nat[m] for m in self.measures], dim=1)
        cat = natural_concat_scores(natural, self.measures, self._name(class_id), layer_standardisation(mean))
        self.nat_concat.append(torch.stack([cat[m] for m in self.measures], dim=1).to(self.dtype).flatten())
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        self.nat_scores.append(rows.to(self.dtype).flatten())
        self.nat_class.append(torch.full((rows.shape[0],), class_id, dtype=self.dtype, device=rows.device))
        self.nat_rank.append(torch.full((rows.shape[0],), rank, dtype=self.dtype, device=rows.device))
        self._class_means[class_id] = mean
        self._computed = None
        self._update_count += 1

    def update(self, candidate_path: Path, class_ids: int | Tensor, class_mean_path: Path | None = None) -> None:
        """Score candidates (layer -> ``[M, C]``) of ``class_ids`` (one int or ``[M]``) against their class mean.

        ``class_mean_path`` (layer -> ``[M, C]`` or ``[C]``) defaults to the means of ``add_natural`` on this rank.
        """
        m = next(iter(_select(candidate_path, self.layer_names).values())).shape[0]
        ids = torch.as_tensor(class_ids).long().cpu().flatten()
        if ids.numel() == 1:
            ids = ids.expand(m)
        if ids.numel() != m:
            raise ConfigError(f"got {ids.numel()} class ids for {m} candidate rows")
        if class_mean_path is None:
            class_mean_path = self._stacked_means(ids)
        scores = self._scores(candidate_path, class_mean_path)
        self.cand_scores.append(scores.to(self.dtype).flatten())
        self.cand_concat.append(self._concat_scores(candidate_path, class_mean_path).to(self.dtype).flatten())
        self.cand_class.append(ids.to(device=scores.device, dtype=self.dtype))

    def _stacked_means(self, ids: Tensor) -> dict[str, Tensor]:
        missing = sorted({self._name(int(c)) for c in ids.unique() if int(c) not in self._class_means}, key=str)
        if missing:
            raise ReferenceDataError(
                f"no natural images added for class(es) {missing} on this process; call add_natural() for them "
                "first or pass class_mean_path"
            )
        return {n: torch.cat([self._class_means[int(c)][n] for c in ids]) for n in self.layer_names}

    def _natural_mask(self, class_id: int, nat_class: Tensor, nat_rank: Tensor) -> Tensor:
        """Natural rows of one class, from the lowest rank that added them."""
        of_class = nat_class == class_id
        if not of_class.any():
            raise ReferenceDataError(
                f"no natural reference images for class {self._name(class_id)!r}; call add_natural() for it on some rank"
            )
        return of_class & (nat_rank == nat_rank[of_class].min())

    def _results(self) -> tuple[Tensor, Tensor, Tensor, dict[int, PercentileResult]]:
        """Candidate class ids ``[M]``, percentiles ``[M, K]`` (layer mean, concatenated) and per-class results."""
        cand, nat = self._rows(self.cand_scores), self._rows(self.nat_scores)
        cand_cat, nat_cat = self._concat_rows(self.cand_concat), self._concat_rows(self.nat_concat)
        cand_class = _cat(self.cand_class, self.dtype).long()
        nat_class, nat_rank = _cat(self.nat_class, self.dtype).long(), _cat(self.nat_rank, self.dtype).long()
        pct = torch.zeros(cand.shape[0], len(self.measures), dtype=torch.float64, device=cand.device)
        pct_cat = torch.zeros_like(pct)
        per_class: dict[int, PercentileResult] = {}
        split = lambda t: {m: t[:, k] for k, m in enumerate(self.measures)}  # noqa: E731
        for c in sorted(set(cand_class.tolist()) | set(nat_class.tolist())):
            rows = cand_class == c
            natural = self._natural_mask(c, nat_class, nat_rank)
            c_scores, n_scores = split(cand[rows]), split(nat[natural])
            c_cat, n_cat = split(cand_cat[rows]), split(nat_cat[natural])
            result, result_cat = percentiles_from_scores(c_scores, n_scores), concat_percentiles(c_cat, n_cat)
            pct[rows] = torch.stack([result[m] for m in self.measures], dim=1)
            pct_cat[rows] = torch.stack([result_cat[m] for m in self.measures], dim=1)
            per_class[c] = PercentileResult(self.layer_names, result, c_scores, n_scores, result_cat, c_cat, n_cat)
        return cand_class, pct, pct_cat, per_class

    def compute(self) -> dict[str, Tensor]:
        cand, cand_cat = self._rows(self.cand_scores), self._concat_rows(self.cand_concat)
        _, pct, pct_cat, _ = self._results()
        out: dict[str, Tensor] = {}
        for k, m in enumerate(self.measures):
            out[f"{m}/percentile"] = pct[:, k].mean().to(self.dtype)
            out[f"{m}/score"] = cand[:, k].mean(-1).mean()
            out[f"{m}/concat_percentile"] = pct_cat[:, k].mean().to(self.dtype)
            out[f"{m}/concat_score"] = cand_cat[:, k].mean()
        return out

    def per_row(self) -> dict[str, Tensor]:
        """Candidates of all processes: ``{"class_id": [M], measure: percentile [M], "concat/<measure>": [M]}``."""
        with self._synced():
            ids, pct, pct_cat, _ = self._results()
        return {"class_id": ids, **{m: pct[:, k] for k, m in enumerate(self.measures)},
                **{f"concat/{m}": pct_cat[:, k] for k, m in enumerate(self.measures)}}

    def per_class(self) -> dict[int, PercentileResult]:
        """Per class id: percentiles, candidate scores and natural scores (for median / 5-95% bands)."""
        with self._synced():
            return self._results()[3]

    def reset(self) -> None:
        super().reset()
        self._class_means = {}


class TargetConfidence(Metric):
    """Mean softmax probability of the target class and top-1 rate: ``{"target_prob", "top1"}``."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("prob_sum", "top1_sum", "count"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        """``logits [B, K]``, ``target [B]`` class indices."""
        target = target.long().to(logits.device)
        scores = target_scores(logits, torch.nn.functional.one_hot(target, logits.shape[-1]), target)
        self.prob_sum += scores.prob.sum()
        self.top1_sum += (scores.rank == 1).sum()
        self.count += target.numel()

    def compute(self) -> dict[str, Tensor]:
        return {"target_prob": self.prob_sum / self.count, "top1": self.top1_sum / self.count}
