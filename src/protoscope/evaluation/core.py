"""Scoring prototypes against natural images of their class (the paper's evaluation).

For each prototype (one row), its activation path is compared with the class-mean path of the
reference images, per measure, under two path definitions:

* ``layer_mean``: a score per layer, then their mean over layers (each layer counts equally);
* ``concat``: one score over all layers' channel vectors concatenated, each layer first standardised
  by the class-mean path's mean and standard deviation over that layer's channels
  (``metrics.layer_standardisation``), so no layer dominates by the size of its activations (layers
  with more channels have more entries, as concatenation implies).

Each path score is ranked among the natural images of the class, each scored against the mean of the
*other* natural images (leave-one-out), giving a percentile in [0, 100] (100: closer to the class mean
than every natural image). ``include_logits=False`` leaves the logits layer out of the path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..metrics import (
    BAND_QUANTILES, DISTANCES, NaturalPercentile, natural_band, resolve_measures, seed_distance, target_scores,
)
from ..metrics.image_stats import image_statistics
from ..models import LOGITS, Classifier, record_activations
from ..reference import ReferenceStats

DEFAULT_EVAL_MEASURES: tuple[str, ...] = ("spearman", "pearson", "cosine", "l1")


@dataclass
class EvaluationResult:
    """Per-row scores of one set of images (one *source*: prototypes, a baseline, ...).

    ``scores[m]`` is ``[R, L]`` (per-layer score against the class-mean path), ``percentile[m]`` is
    ``[R]``; ``natural[c][m]`` is ``[N_c, L]`` (each natural image against its leave-one-out mean).
    """

    label: str
    layer_names: list[str]
    measures: tuple[str, ...]
    class_ids: list[int]
    class_names: list[str]
    seeds: list[int]
    scores: dict[str, Tensor]
    percentile: dict[str, Tensor]
    target_prob: Tensor
    target_rank: Tensor
    top_class: list[str]
    natural: dict[int, dict[str, Tensor]]
    files: list[str] | None = None
    reference: dict[str, Any] = field(default_factory=dict)
    concat: dict[str, Tensor] = field(default_factory=dict)  # measure -> [R], the concatenated path
    concat_percentile: dict[str, Tensor] = field(default_factory=dict)  # measure -> [R]
    natural_concat: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # class -> measure -> [N]
    seed_distance: dict[int, float] = field(default_factory=dict)  # class -> mean pairwise seed distance
    image_stats: dict[str, Tensor] = field(default_factory=dict)  # statistic -> [R] (metrics.image_stats)
    natural_image_stats: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # class -> statistic -> [N]
    natural_examples: dict[int, Tensor] = field(default_factory=dict)  # class -> uint8 [k, C, H, W]
    images: Tensor | None = None  # the evaluated images [R, C, H, W] in [0,1] (for figures)

    def __len__(self) -> int:
        return len(self.class_ids)

    @property
    def classes(self) -> list[int]:
        """Class ids present, in first-seen order."""
        return list(dict.fromkeys(self.class_ids))

    def class_name(self, class_id: int) -> str:
        return self.class_names[self.class_ids.index(class_id)]

    def layer_mean(self, measure: str) -> Tensor:
        """Layer-mean score per row, ``[R]``."""
        return self.scores[measure].mean(-1)

    def rows_of(self, class_id: int) -> list[int]:
        return [i for i, c in enumerate(self.class_ids) if c == class_id]

    def band(self, class_id: int, measure: str, quantiles: Sequence[float] = BAND_QUANTILES) -> Tensor:
        """Per-layer 5/50/95% quantiles of the natural images of ``class_id``: ``[3, L]``."""
        return natural_band(self.natural[class_id][measure], quantiles)

    def natural_mean(self, class_id: int, measure: str) -> Tensor:
        """Layer-mean score of each natural image of ``class_id``, ``[N]``."""
        return self.natural[class_id][measure].mean(-1)

    def path_score(self, measure: str, definition: str = "layer_mean") -> Tensor:
        """Path score per row under ``definition`` (``layer_mean`` or ``concat``), ``[R]``."""
        return self.layer_mean(measure) if definition == "layer_mean" else self.concat[measure]

    def path_percentile(self, measure: str, definition: str = "layer_mean") -> Tensor:
        """Percentile per row among the natural images of its class under ``definition``, ``[R]``."""
        return self.percentile[measure] if definition == "layer_mean" else self.concat_percentile[measure]

    def natural_path_score(self, class_id: int, measure: str, definition: str = "layer_mean") -> Tensor:
        """Path score of each natural image of ``class_id`` under ``definition``, ``[N]``."""
        return self.natural_mean(class_id, measure) if definition == "layer_mean" \
            else self.natural_concat[class_id][measure]

    def records(self) -> list[dict[str, Any]]:
        """One flat dict per row: ids, per-layer values, layer means, percentiles, target prob/rank."""
        out = []
        for i in range(len(self)):
            rec: dict[str, Any] = {"class_index": self.class_ids[i], "class_name": self.class_names[i],
                                   "seed_index": self.seeds[i], "source": self.label}
            for m in self.measures:
                rec.update({f"{m}/{l}": float(self.scores[m][i, j]) for j, l in enumerate(self.layer_names)})
            for m in self.measures:
                rec[f"{m}/mean"] = float(self.scores[m][i].mean())
            for m in self.measures:
                rec[f"{m}/percentile"] = float(self.percentile[m][i])
            for m in self.measures:
                rec[f"{m}/concat"] = float(self.concat[m][i])
            for m in self.measures:
                rec[f"{m}/concat_percentile"] = float(self.concat_percentile[m][i])
            rec.update(target_prob=float(self.target_prob[i]), target_rank=int(self.target_rank[i]),
                       top_class=self.top_class[i])
            rec.update({f"image/{s}": float(v[i]) for s, v in self.image_stats.items()})
            if self.files is not None:
                rec["file"] = self.files[i]
            out.append(rec)
        return out


def higher_is_better(measure: str) -> bool:
    return measure not in DISTANCES


@torch.no_grad()
def forward_paths(classifier: Classifier, images: Tensor, batch_size: int = 32,
                  device: str | torch.device | None = None, progress: bool | None = None,
                  desc: str = "evaluate") -> tuple[dict[str, Tensor], Tensor]:
    """Activation paths (layer -> ``[R, C]``, CPU) and logits ``[R, K]`` with one forward per batch."""
    home = classifier.network.mean.device
    target = torch.device(device) if device is not None else home
    names = [n for n in classifier.layer_names]
    paths: dict[str, list[Tensor]] = {n: [] for n in names}
    logits: list[Tensor] = []
    try:
        classifier.to(target)
        starts = range(0, len(images), batch_size)
        for s in tqdm(starts, desc=desc, unit="batch", disable=None if progress is None else not progress):
            with record_activations(classifier.network, [n for n in names if n != LOGITS],
                                    classifier.reduction) as store:
                out = classifier.network(images[s:s + batch_size].to(target)).float()
            for n in names:
                paths[n].append((out if n == LOGITS else store[n]).float().cpu())
            logits.append(out.cpu())
    finally:
        classifier.to(home)
    return {n: torch.cat(v) for n, v in paths.items()}, torch.cat(logits)


def evaluate_prototypes(
    classifier: Classifier,
    images: Tensor,
    class_ids: Sequence[int],
    seeds: Sequence[int],
    reference: ReferenceStats,
    measures: str | Iterable[str] = DEFAULT_EVAL_MEASURES,
    label: str = "prototype",
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    files: Sequence[str] | None = None,
    progress: bool | None = None,
    include_logits: bool = True,
) -> EvaluationResult:
    """Score ``images [R,C,H,W]`` (in [0,1]) of ``class_ids`` against ``reference`` (see module doc)."""
    measures = resolve_measures(measures)
    class_ids = [int(c) for c in class_ids]
    seeds = [int(s) for s in seeds]
    if images.dim() != 4 or len(images) != len(class_ids) or len(seeds) != len(class_ids):
        raise ConfigError(f"{label}: need images [R,C,H,W] with R class ids and seeds, got images "
                          f"{tuple(images.shape)}, {len(class_ids)} class ids, {len(seeds)} seeds")
    if not class_ids:
        raise ConfigError(f"{label}: no images to evaluate")
    if images.shape[1] != classifier.channels:
        raise ConfigError(f"{label}: images have {images.shape[1]} channels, model {classifier.name} takes "
                          f"{classifier.channels}; evaluate with the model the images were made for")
    bad = sorted({c for c in class_ids if not 0 <= c < classifier.num_classes})
    if bad:
        raise ConfigError(f"{label}: class ids {bad} out of range for model {classifier.name} "
                          f"({classifier.num_classes} classes)")
    if list(reference.layer_names) != list(classifier.layer_names):
        raise ConfigError(f"reference statistics have layers {reference.layer_names}, the model "
                          f"{classifier.layer_names}; recompute them for this model")
    layers = [n for n in classifier.layer_names if include_logits or n != LOGITS]
    if not layers:
        raise ConfigError(f"model {classifier.name} has no layers besides the logits: keep include_logits=true")
    path, logits = forward_paths(classifier, images.float(), batch_size, device, progress, desc=label)
    ids = torch.tensor(class_ids)
    scores = {m: torch.zeros(len(ids), len(layers), dtype=torch.float64) for m in measures}
    pct = {m: torch.zeros(len(ids), dtype=torch.float64) for m in measures}
    concat = {m: torch.zeros(len(ids), dtype=torch.float64) for m in measures}
    pct_concat = {m: torch.zeros(len(ids), dtype=torch.float64) for m in measures}
    natural: dict[int, dict[str, Tensor]] = {}
    natural_concat: dict[int, dict[str, Tensor]] = {}
    # the images are already those of every process: no gathering (a rank-0-only call must not wait for peers)
    metric = NaturalPercentile(layers, measures, class_names=classifier.class_names, sync_on_compute=False)
    metric.set_dtype(torch.float64)  # states in double, as the functional core computes
    for c in dict.fromkeys(class_ids):
        ref_paths = reference.image_paths(c)
        metric.add_natural({n: ref_paths[n] for n in layers}, c)
    metric.update({n: path[n] for n in layers}, ids)
    for c, res in metric.per_class().items():
        rows = ids == c
        for m in measures:
            scores[m][rows] = res.candidate_scores[m].double()
            pct[m][rows] = res.percentile[m].double()
            concat[m][rows] = res.candidate_concat[m].double()
            pct_concat[m][rows] = res.concat_percentile[m].double()
        natural[c] = {m: res.natural_scores[m].double() for m in measures}
        natural_concat[c] = {m: res.natural_concat[m].double() for m in measures}
    target = target_scores(logits, torch.nn.functional.one_hot(ids, logits.shape[-1]), ids)
    return EvaluationResult(
        label=label, layer_names=layers, measures=measures, class_ids=class_ids,
        class_names=[classifier.class_names[c] for c in class_ids], seeds=seeds, scores=scores, percentile=pct,
        target_prob=target.prob,
        target_rank=target.rank,
        top_class=[classifier.class_names[int(k)] for k in logits.argmax(-1)],
        natural=natural, files=None if files is None else [str(f) for f in files],
        reference=reference_info(reference), concat=concat, concat_percentile=pct_concat,
        natural_concat=natural_concat, seed_distance=seed_distance({n: path[n] for n in layers}, class_ids),
        image_stats=image_statistics(images.clamp(0, 1)), images=images.detach().float().cpu(),
        natural_image_stats={c: reference.image_stats[c] for c in natural if c in reference.image_stats},
        natural_examples={c: reference.examples[c] for c in natural if c in reference.examples},
    )


def reference_info(reference: ReferenceStats) -> dict[str, Any]:
    """What the JSON output says about the reference statistics."""
    return {"key": reference.key, "from_cache": bool(reference.from_cache),
            "counts": {int(c): int(n) for c, n in reference.counts.items()},
            "source": reference.source}
