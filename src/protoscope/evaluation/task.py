"""The ``protoscope-evaluate`` task: from a composed config to an evaluation folder.

Model: ``model=<name>`` when given, else the ``model`` node of the run's ``config.yaml``.
Reference (when ``reference`` is not given): the run's own ``reference`` node if its config has one;
else ``fashion_mnist`` for a model with the Fashion-MNIST class list; else ``bundled_photos`` for a
1000-class (ImageNet) model (a small offline proxy: use ``reference=imagenet_val`` for real numbers);
anything else must name one, e.g. ``reference=image_folder reference.root=<folder>``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from ..errors import ConfigError, ReferenceDataError
from ..hydra_utils import logged_run, save_config
from ..models import Classifier, load_model
from ..models.class_names import FASHION_MNIST
from ..models.store import pinned
from ..paths import conf_dir
from ..reference import build_reference
from .core import EvaluationResult, evaluate_prototypes
from .inputs import ImageSet, check_run_classes, load_image_folder, load_run
from .writers import log_evaluation, write_evaluation

log = logging.getLogger("protoscope")


@dataclass
class EvaluationOutput:
    out_dir: Path
    result: EvaluationResult
    baseline: EvaluationResult | None
    files: dict[str, Path]


def choose_reference(cfg: DictConfig, classifier: Classifier, run: ImageSet | None = None) -> DictConfig:
    """The reference config to use (see the module doc for the default rule)."""
    if cfg.get("reference") is not None:
        return cfg.reference
    if run is not None and run.config is not None and OmegaConf.is_dict(run.config.get("reference")) \
            and "_target_" in run.config.reference:
        return run.config.reference
    if list(classifier.class_names) == FASHION_MNIST:
        name = "fashion_mnist"
    elif classifier.num_classes == 1000:
        name = "bundled_photos"
    else:
        raise ConfigError(
            f"no default reference for model {classifier.name} ({classifier.num_classes} classes): give natural "
            "images of its classes, e.g. reference=image_folder reference.root=<folder with one sub-folder per class>"
        )
    log.info("reference not set: using reference=%s for model %s", name, classifier.name)
    return OmegaConf.load(conf_dir() / "reference" / f"{name}.yaml")


def _device(value: Any) -> torch.device:
    if value in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(value))


def _load_set(cfg: DictConfig, prefix: str, classifier: Classifier, label: str) -> ImageSet | None:
    run_key, images_key = ("run_dir", "images") if prefix == "" else ("baseline_run", "baseline_images")
    run_dir, folder = cfg.get(run_key), cfg.get(images_key)
    if run_dir and folder:
        raise ConfigError(f"give {run_key}= or {images_key}=, not both")
    if run_dir:
        images = load_run(run_dir, label)
        check_run_classes(images, classifier)
        made_with = images.config.get("model", {}).get("name") if images.config is not None else None
        if made_with not in (None, classifier.name):
            log.warning("%s was generated with model %s, evaluated with %s", run_dir, made_with, classifier.name)
        return images
    if folder:
        mapping = cfg.get("mapping" if prefix == "" else "baseline_mapping")
        return load_image_folder(folder, mapping, classifier, bool(cfg.get("resize", False)), label)
    return None


def evaluation_dir(cfg: DictConfig) -> Path:
    """Where an evaluation writes: ``out_dir``, else ``<run_dir>/evaluation``, else its Hydra run folder."""
    if cfg.get("out_dir"):
        return Path(str(cfg.out_dir))
    return Path(str(cfg.run_dir)) / "evaluation" if cfg.get("run_dir") else Path(str(cfg.paths.output_dir))


def run_evaluation(cfg: DictConfig) -> EvaluationOutput:
    """Evaluate ``run_dir`` (or ``images``), optionally with a baseline, and write ``out_dir``."""
    if bool(cfg.get("run_dir")) == bool(cfg.get("images")):
        raise ConfigError("give exactly one of run_dir=<protoscope-generate run folder> or images=<folder>")
    run = load_run(cfg.run_dir, cfg.get("label") or "prototype") if cfg.get("run_dir") else None
    model_cfg = cfg.get("model")
    if model_cfg is None:
        if run is None or run.config is None or run.config.get("model") is None:
            raise ConfigError("set model=<name> (e.g. model=efficientnet_lite0): "
                              + ("images= folders carry no model" if run is None else f"{cfg.run_dir} has no config.yaml"))
        model_cfg = run.config.model
    model_cfg = pinned(model_cfg)
    classifier = load_model(model_cfg)
    if run is not None:
        check_run_classes(run, classifier)
        main = run
    else:
        main = _load_set(cfg, "", classifier, cfg.get("label") or Path(cfg.images).name)
    baseline = _load_set(cfg, "baseline", classifier, cfg.get("baseline_label") or "baseline")
    if baseline is not None and baseline.label == main.label:
        raise ConfigError(f"the baseline and the evaluated images are both labelled {main.label!r}: set baseline_label=")
    ref_cfg = choose_reference(cfg, classifier, run)
    device = _device(cfg.get("device"))
    classes = sorted(set(main.class_ids) | set(baseline.class_ids if baseline else []))
    try:
        reference = build_reference(ref_cfg, classifier, classes, device=device)
    except ReferenceDataError as exc:
        raise ReferenceDataError(f"{exc} (reference={ref_cfg.get('name')}; choose another with reference=image_folder "
                                 "reference.root=<folder> or reference=imagenet_val reference.root=<val folder>)") from exc
    if reference is None:
        raise ConfigError("evaluation needs reference statistics: set reference=<source>, not none")
    log.info("reference statistics %s: cache %s (%s natural images of %d classes)", ref_cfg.get("name"),
             "hit" if reference.from_cache else "miss", sum(reference.counts.values()), len(reference.classes))
    kw = dict(measures=list(cfg.measures), batch_size=int(cfg.batch_size), device=device,
              progress=cfg.get("progress"), include_logits=bool(cfg.get("include_logits", True)))
    result = evaluate_prototypes(classifier, main.images, main.class_ids, main.seeds, reference,
                                 label=main.label, files=main.files, **kw)
    base = None if baseline is None else evaluate_prototypes(
        classifier, baseline.images, baseline.class_ids, baseline.seeds, reference, label=baseline.label,
        files=baseline.files, **kw)
    out_dir = evaluation_dir(cfg)
    used = cfg.copy()
    with open_dict(used):  # record what was actually used
        used.model, used.reference = model_cfg, ref_cfg
    save_config(used, out_dir / "config.yaml")
    files = write_evaluation(result, out_dir, base, max_panels=int(cfg.get("max_panels", 12)))
    with logged_run(cfg.get("logger"), used) as loggers:
        log_evaluation(loggers, files, result, base)
    for s in [result] + ([base] if base else []):
        log.info("%s: %d rows, mean %s", s.label, len(s), ", ".join(
            f"{m} {float(s.layer_mean(m).mean()):.3f} (pct {float(s.percentile[m].mean()):.1f})"
            for m in s.measures if m in ("spearman", "l1")))
    return EvaluationOutput(out_dir, result, base, files)
