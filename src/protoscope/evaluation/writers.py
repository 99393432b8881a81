"""Writing an evaluation to a folder (atomically) and sending it to experiment loggers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ..generation.export import save_figure
from ..io import write_csv, write_json, write_text
from .core import EvaluationResult
from .plots import examples_figure, layer_figure, percentile_figure
from .summary import summary_markdown, summary_measures

log = logging.getLogger("protoscope")


def natural_stats(sources: Sequence[EvaluationResult]) -> dict[str, Any]:
    """Per class: natural image count, per-layer 5/50/95% bands, and per measure each natural image's path
    score under both definitions (``mean_scores``, ``concat_scores``) with their medians."""
    out: dict[str, Any] = {}
    for s in sources:
        for c in s.classes:
            name = s.class_name(c)
            if name in out:
                continue
            entry: dict[str, Any] = {"class_index": c, "count": int(next(iter(s.natural[c].values())).shape[0])}
            for m in s.measures:
                band = s.band(c, m)
                entry[m] = {"p05": band[0].tolist(), "median": band[1].tolist(), "p95": band[2].tolist(),
                            "mean_median": float(s.natural_mean(c, m).median()),
                            "concat_median": float(s.natural_path_score(c, m, "concat").median()),
                            "mean_scores": s.natural_mean(c, m).tolist(),
                            "concat_scores": s.natural_path_score(c, m, "concat").tolist()}
            out[name] = entry
    return out


def summary_scalars(result: EvaluationResult, prefix: str = "eval") -> dict[str, float]:
    """Overall means (for experiment loggers): layer-mean score, percentile, share at 100, target prob."""
    out = {}
    for m in result.measures:
        out[f"{prefix}/{result.label}/{m}/mean"] = float(result.layer_mean(m).mean())
        out[f"{prefix}/{result.label}/{m}/percentile"] = float(result.percentile[m].mean())
        out[f"{prefix}/{result.label}/{m}/at_100"] = float((result.percentile[m] >= 100).double().mean())
        out[f"{prefix}/{result.label}/{m}/concat"] = float(result.concat[m].mean())
        out[f"{prefix}/{result.label}/{m}/concat_percentile"] = float(result.concat_percentile[m].mean())
        out[f"{prefix}/{result.label}/{m}/concat_at_100"] = float((result.concat_percentile[m] >= 100).double().mean())
    out[f"{prefix}/{result.label}/target_prob"] = float(result.target_prob.mean())
    if result.seed_distance:
        out[f"{prefix}/{result.label}/seed_distance"] = sum(result.seed_distance.values()) / len(result.seed_distance)
    return out


def write_evaluation(result: EvaluationResult, out_dir: str | Path, baseline: EvaluationResult | None = None,
                     max_panels: int = 12) -> dict[str, Path]:
    """Write path_similarity.{json,csv}, summary.md, path_similarity_<measure>.png and percentiles.png."""
    out_dir = Path(out_dir)
    sources = [result] + ([baseline] if baseline is not None else [])
    if baseline is not None and baseline.label == result.label:
        raise ConfigError(f"the baseline needs another label than {result.label!r} (set baseline_label=)")
    records = [r for s in sources for r in s.records()]
    files = {
        "csv": write_csv(out_dir / "path_similarity.csv", records),
        "json": write_json(out_dir / "path_similarity.json", {
            "layers": result.layer_names,
            "measures": list(result.measures),
            "path_definitions": {
                "layer_mean": "<measure>/mean and <measure>/percentile: mean over layers of the per-layer scores",
                "concat": "<measure>/concat and <measure>/concat_percentile: one score over all layers' channel "
                          "vectors concatenated, each layer standardised by the class-mean path's mean and std "
                          "over its channels",
            },
            "sources": [s.label for s in sources],
            "reference": result.reference,
            "summary": {k: v for s in sources for k, v in summary_scalars(s).items()},
            "natural": natural_stats(sources),
            "seed_distance": {s.label: {s.class_name(c): d for c, d in s.seed_distance.items()} for s in sources},
            "prototypes": records,
        }),
        "summary": write_text(out_dir / "summary.md", summary_markdown(result, baseline)),
    }
    for m in result.measures:
        path = out_dir / f"path_similarity_{m}.png"
        save_figure(layer_figure(sources, m, max_panels), path)
        files[f"plot_{m}"] = path
    files["percentiles"] = out_dir / "percentiles.png"
    save_figure(percentile_figure(sources, summary_measures(result)), files["percentiles"])
    if any(s.natural_examples for s in sources):
        files["examples"] = out_dir / "examples.png"
        save_figure(examples_figure(sources, max_panels or 12), files["examples"])
    log.info("wrote the evaluation of %s to %s", " and ".join(f"{len(s)} {s.label} rows" for s in sources), out_dir)
    return files


def log_evaluation(loggers: Sequence[Any], files: dict[str, Path], result: EvaluationResult,
                   baseline: EvaluationResult | None = None) -> None:
    """Overall scalars to every logger; to W&B loggers also the per-row table and the plots."""
    sources = [result] + ([baseline] if baseline is not None else [])
    scalars = {k: v for s in sources for k, v in summary_scalars(s).items()}
    for lg in loggers:
        lg.log_metrics(scalars)
        if type(lg).__name__ != "WandbLogger":
            continue
        records = [r for s in sources for r in s.records()]
        columns = list(dict.fromkeys(k for r in records for k in r))
        lg.log_table(key="evaluation/path_similarity", columns=columns,
                     data=[[r.get(c) for c in columns] for r in records])
        for key, path in files.items():
            if key.startswith("plot_") or key in ("percentiles", "examples"):
                lg.log_image(key=f"evaluation/{path.stem}", images=[str(path)])
