"""The ``protoscope-compare`` task: from a composed config (conf/compare.yaml) to a comparison folder.

Output (``outputs/compare/<time>/``): ``a/`` and ``b/`` (the two generation runs, reused when complete),
``ranking.csv|md``, ``comparison.json``, ``heatmaps.png`` and ``heatmaps/``, ``side_by_side.png`` and
``side_by_side/``; with ``mark=...`` also ``detection.csv`` and ``mark.png``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..hydra_utils import logged_run, save_config
from ..io import write_png
from ..models.store import pin_models
from ..reference import build_reference
from ..shortcuts import Mark, detection_scores, make_mark
from .core import Comparison, Side, _weights, compare_sides, natural_cross_scores
from .sides import load_sides
from .writers import log_comparison, write_comparison

log = logging.getLogger("protoscope")


@dataclass
class CompareOutput:
    out_dir: Path
    comparison: Comparison
    detection: list[dict[str, Any]] | None
    files: dict[str, Path]


def build_mark(cfg: DictConfig, size: int, channels: int) -> Mark | None:
    """The configured mark (``mark=square|stripes|file``) at the prototypes' size, or None."""
    if not cfg.get("mark"):
        return None
    return make_mark(OmegaConf.to_container(cfg.mark, resolve=True), size, channels)


def mark_detection(a: Side, b: Side, mark: Mark, detect: DictConfig | dict) -> list[dict[str, Any]]:
    """Detection records of both models' prototypes (see protoscope.shortcuts.detect)."""
    ring = detect.get("ring")
    opts = dict(ring=None if ring is None else int(ring), shift=int(detect.get("shift", 2)), baseline=str(detect.get("baseline", "equidistant")),
                baseline_steps=int(detect.get("baseline_steps", 100)))
    return [rec for side in (a, b) for rec in
            detection_scores(side.classifier, side.images, side.class_ids, mark, label=side.label, **opts).records()]


def run_compare(cfg: DictConfig) -> CompareOutput:
    """Generate (or load) both sides, compare them class by class, write and log the results."""
    out_dir = Path(str(cfg.paths.output_dir))
    pin_models(cfg, ("model_a", "model_b"))  # both sides' exact weights files, before anything is written
    pin_models(cfg, ("model",), required=False)  # unused by compare; pinned alike so it compares equal
    weights = _weights(OmegaConf.to_container(cfg.weights) if cfg.get("weights") else None)
    if cfg.get("mark") and not cfg.get("run_a"):  # a bad mark fails before any generation
        build_mark(cfg, int(cfg.get("image_size") or cfg.model_a.input_size), int(cfg.model_a.channels))
    save_config(cfg, out_dir / "config.yaml")
    a, b = load_sides(cfg, out_dir)
    comp = compare_sides(a, b, weights, int(cfg.get("batch_size", 64)))
    if cfg.get("reference"):
        classes = sorted(set(a.class_ids))
        refs = [build_reference(cfg.reference, side.classifier, classes) for side in (a, b)]
        extra = natural_cross_scores(a, b, refs, int(cfg.get("batch_size", 64)))
        for rec in comp.records:
            rec.update(extra[rec["class_index"]])
    detection = None
    mark = build_mark(cfg, int(a.images.shape[-1]), int(a.images.shape[1]))
    if mark is not None:
        detection = mark_detection(a, comp.b, mark, cfg.get("detect") or {})
        write_png(out_dir / "mark.png", mark.picture())
    meta = {"weights_config": weights, "mark": None if mark is None else mark.spec}
    files = write_comparison(comp, out_dir, detection, meta)
    with logged_run(cfg.get("logger"), cfg) as loggers:
        log_comparison(loggers, files, comp, detection)
    for rec in comp.records[:3]:
        log.info("#%d %s: difference %.4f (pixel %.4f, cross %.4f, path %.4f)", rec["rank"], rec["class_name"],
                 rec["difference"], rec["pixel"], rec["cross"], rec["path"])
    return CompareOutput(out_dir, comp, detection, files)
