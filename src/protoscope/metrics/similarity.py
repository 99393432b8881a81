"""Per-layer similarity measures between activation vectors, and their use on whole activation paths.

Every measure compares a candidate ``a [B, C]`` with a reference ``b [B, C]`` (row ``i`` of ``b`` is the
class mean for row ``i``'s class; ``[C]`` or ``[1, C]`` broadcasts) and returns one value per row ``[B]``.
All work is vectorised over rows and done in float64; the result has the inputs' floating dtype.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import Tensor

from ..errors import ConfigError, ReferenceDataError

Path = Mapping[str, Tensor]
Measure = Callable[[Tensor, Tensor], Tensor]

L1_EPS = 1e-8
_TINY = 1e-300  # guards 0/0 for constant or all-zero rows (the measure is then 0)


def _prepare(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, torch.dtype]:
    """Broadcast ``b`` to ``a``, check shapes, and move both to float64."""
    if a.dim() != 2:
        raise ConfigError(f"candidate activations must be [B, C], got shape {tuple(a.shape)}")
    if b.dim() == 1:
        b = b.unsqueeze(0)
    if b.shape[-1] != a.shape[-1] or b.shape[0] not in (1, a.shape[0]):
        raise ReferenceDataError(
            f"reference activations of shape {tuple(b.shape)} do not fit candidate activations of shape "
            f"{tuple(a.shape)}; recompute the reference statistics for this model and these layers"
        )
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    if not out_dtype.is_floating_point:
        out_dtype = torch.get_default_dtype()
    return a.double(), b.double().expand_as(a), out_dtype


def _ranks(x: Tensor) -> Tensor:
    """1-based ranks along the last dimension; ties get their average rank (as scipy's ``rankdata``)."""
    values, order = x.sort(dim=-1)
    first = torch.searchsorted(values, values, right=False)  # 0-based index of the first equal value
    end = torch.searchsorted(values, values, right=True)  # one past the last equal value
    average = (first + end + 1).to(torch.float64) / 2
    return torch.empty_like(average).scatter_(-1, order, average)


def _pearson64(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    num = (a * b).sum(-1)
    den = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    return num / den.clamp_min(_TINY)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation per row, ``[B]``; 0 where a row is constant."""
    a, b, dtype = _prepare(a, b)
    return _pearson64(a, b).to(dtype)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per row (average ranks for ties), ``[B]``; 0 where a row is constant."""
    a, b, dtype = _prepare(a, b)
    return _pearson64(_ranks(a), _ranks(b)).to(dtype)


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity per row, ``[B]``; 0 where a row is all zeros."""
    a, b, dtype = _prepare(a, b)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return ((a * b).sum(-1) / den.clamp_min(_TINY)).to(dtype)


def normalised_l1(a: Tensor, b: Tensor, eps: float = L1_EPS) -> Tensor:
    """``mean_c |a - b| / (mean_c |b| + eps)`` per row, ``[B]``: a distance (lower is closer)."""
    a, b, dtype = _prepare(a, b)
    return ((a - b).abs().mean(-1) / (b.abs().mean(-1) + eps)).to(dtype)


MEASURES: dict[str, Measure] = {
    "spearman": spearman,
    "pearson": pearson,
    "cosine": cosine,
    "l1": normalised_l1,
}
DISTANCES: frozenset[str] = frozenset({"l1"})
"""Measures where lower is closer; all others are similarities (higher is closer)."""
DEFAULT_MEASURES: tuple[str, ...] = tuple(MEASURES)


def resolve_measures(measures: str | Iterable[str]) -> tuple[str, ...]:
    """Validate measure names (one name or several) and return them as a tuple, order kept."""
    names = (measures,) if isinstance(measures, str) else tuple(measures)
    unknown = [m for m in names if m not in MEASURES]
    if unknown or not names:
        raise ConfigError(f"unknown similarity measure(s) {unknown or names}; choose from {sorted(MEASURES)}")
    return names


def check_path(candidate_path: Path, reference_path: Path) -> list[str]:
    """The candidate's layer names, after checking the reference has every one of them."""
    layers = list(candidate_path)
    if not layers:
        raise ConfigError("the candidate activation path has no layers; select at least one layer")
    missing = [n for n in layers if n not in reference_path]
    if missing:
        raise ReferenceDataError(
            f"reference path lacks layer(s) {missing} (it has {list(reference_path)}); "
            "recompute the reference statistics with the same layers as the candidate"
        )
    return layers


def path_similarity(
    candidate_path: Path, reference_path: Path, measures: str | Iterable[str] = DEFAULT_MEASURES
) -> dict[str, Tensor]:
    """Per-layer scores: measure -> ``[B, L]``, layers in the candidate path's order."""
    layers = check_path(candidate_path, reference_path)
    return {
        m: torch.stack([MEASURES[m](candidate_path[n], reference_path[n]) for n in layers], dim=-1)
        for m in resolve_measures(measures)
    }


Standardisation = dict[str, tuple[Tensor, Tensor]]


def layer_standardisation(mean_path: Path) -> Standardisation:
    """Per layer l of a class-mean path m: ``(mu_l, sigma_l)`` = mean and (population) standard deviation
    of m_l over its channels (as ``[B, 1]`` float64 for ``[B, C]`` or ``[C]`` input; sigma 0 -> 1).

    ``z_l(a) = (a_l - mu_l) / sigma_l`` puts every layer of the class mean on zero mean and unit spread,
    so a layer with large activations cannot dominate the concatenated path.
    """
    out: Standardisation = {}
    for name, t in mean_path.items():
        t = t.double().reshape(-1, t.shape[-1])
        sd = t.std(-1, unbiased=False, keepdim=True)
        out[name] = (t.mean(-1, keepdim=True), torch.where(sd > 0, sd, torch.ones_like(sd)))
    return out


def concat_path(path: Path, standardisation: Standardisation, layers: Iterable[str]) -> Tensor:
    """``[B, sum_l C_l]``: the layers' vectors standardised by ``standardisation`` and concatenated in order."""
    parts = []
    for name in layers:
        t = path[name].double()
        t = t.reshape(-1, t.shape[-1])
        mu, sd = standardisation[name]
        parts.append((t - mu.to(t.device)) / sd.to(t.device))
    return torch.cat(parts, -1)


def concat_similarity(candidate_path: Path, reference_path: Path, standardisation: Standardisation,
                      measures: str | Iterable[str] = DEFAULT_MEASURES) -> dict[str, Tensor]:
    """One score per row over all layers concatenated: measure -> ``[B]`` (float64).

    Candidate and reference go through the same per-layer standardisation (see
    :func:`layer_standardisation`, normally of the class-mean path), then the measure compares the
    concatenated vectors. Layers, as in :func:`path_similarity`, are the candidate path's.
    """
    layers = check_path(candidate_path, reference_path)
    missing = [n for n in layers if n not in standardisation]
    if missing:
        raise ReferenceDataError(f"no standardisation for layer(s) {missing}; compute it from the class-mean path")
    a = concat_path(candidate_path, standardisation, layers)
    b = concat_path(reference_path, standardisation, layers)
    return {m: MEASURES[m](a, b) for m in resolve_measures(measures)}


def layer_mean(scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Mean over layers of per-layer scores: measure -> ``[B]`` (from ``[B, L]``)."""
    return {m: s.mean(-1) for m, s in scores.items()}
