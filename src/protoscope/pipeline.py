"""One generation run, from a composed config to files in the run folder."""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
import torch
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .evaluation import evaluate_prototypes, log_evaluation, write_evaluation
from .export import export_prototypes, image_filename, log_to_loggers, prototype_records
from .hydra_utils import build, build_loggers, finish_loggers, save_config
from .models import Classifier, load_model
from .module import PrototypeModule, RowRandom, Schedule
from .reference import build_reference
from .rows import Row, resolve_rows
from .transforms import RandomAffine

log = logging.getLogger("protoscope")
# The frozen classifier is in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")


@dataclass
class GenerationResult:
    out_dir: Path
    images: torch.Tensor
    rows: list[Row]
    records: list[dict[str, Any]]
    seconds: float


def check_image_size(classifier: Classifier, size: int) -> None:
    """Fail early, with the fix, if the classifier cannot take ``size`` x ``size`` images."""
    if size < 8:
        raise ConfigError(f"image_size={size} is too small; use at least 8 (the model's is {classifier.input_size})")
    probe = torch.zeros(1, classifier.channels, size, size, device=classifier.network.mean.device)
    try:
        with torch.no_grad():
            out = classifier.network(probe)
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise ConfigError(
            f"model {classifier.name} cannot take {size}x{size} images ({str(exc).splitlines()[0]}). "
            f"Use image_size={classifier.input_size} (the model's input size)."
        ) from exc
    if out.shape[-1] != classifier.num_classes:
        raise ConfigError(
            f"model {classifier.name} returns {out.shape[-1]} outputs but has {classifier.num_classes} class "
            "names: fix model.class_names or model.arch.num_classes."
        )


def prepare(cfg: DictConfig) -> tuple[Classifier, list[Row], int]:
    """Everything that can fail on bad input, before any optimisation starts."""
    classifier = load_model(cfg.model)
    size = int(cfg.image_size) if cfg.get("image_size") else classifier.input_size
    check_image_size(classifier, size)
    classes = OmegaConf.to_container(cfg.classes) if OmegaConf.is_config(cfg.classes) else cfg.classes
    rows = resolve_rows(classes, classifier.class_names, int(cfg.seeds_per_class))
    return classifier, rows, size


def build_module(cfg: DictConfig, classifier: Classifier, rows: list[Row], size: int) -> PrototypeModule:
    seed = int(cfg.seed)
    param = build(cfg.param)(rows=len(rows), channels=classifier.channels, size=size,
                             generators=[r.generator(seed, "init") for r in rows])
    transform = build(cfg.transform) if cfg.get("transform") else RandomAffine()
    regularizers = {name: build(sub) for name, sub in (cfg.get("regularizer") or {}).items() if sub}
    return PrototypeModule(
        classifier=classifier,
        rows=rows,
        param=param,
        transform=transform,
        objective=build(cfg.objective),
        regularizers=regularizers,
        optimizer=build(cfg.optimizer),
        schedule=Schedule(**OmegaConf.to_container(cfg.schedule)),
        transform_random=RowRandom([r.stream_seed(seed, "transform") for r in rows], RandomAffine.NUM_RANDOM),
        log_every=int(cfg.trainer.get("log_every_n_steps", 25)),
    )


def evaluate_run(out_dir: Path, classifier: Classifier, images: torch.Tensor, rows: list[Row],
                 reference: Any, loggers: list[Any]) -> None:
    """Path similarity of the single-class prototypes against the reference, into ``out_dir/evaluation``."""
    keep = [i for i, r in enumerate(rows) if len(r.classes) == 1]
    if not keep:
        log.info("no single-class prototypes to evaluate")
        return
    result = evaluate_prototypes(classifier, images[keep], [rows[i].classes[0] for i in keep],
                                 [rows[i].seed for i in keep], reference,
                                 files=[f"prototypes/{image_filename(rows[i])}" for i in keep])
    files = write_evaluation(result, out_dir / "evaluation")
    log_evaluation(loggers, files, result, None)
    log.info("path similarity: mean spearman %.3f (percentile %.1f), mean l1 %.3f (percentile %.1f)",
             float(result.layer_mean("spearman").mean()), float(result.percentile["spearman"].mean()),
             float(result.layer_mean("l1").mean()), float(result.percentile["l1"].mean()))


def run_generation(cfg: DictConfig) -> GenerationResult | None:
    """Generate prototypes for ``cfg`` and write them to ``cfg.paths.output_dir``.

    Returns the result on the global-zero process, None on other ranks.
    """
    start = time.perf_counter()
    out_dir = Path(cfg.paths.output_dir)
    classifier, rows, size = prepare(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = build_module(cfg, classifier, rows, size)
    log.info("generating %d prototypes (%d classes x %d seeds) at %dpx for %d steps",
             len(rows), len(rows) // int(cfg.seeds_per_class), int(cfg.seeds_per_class), size,
             module.schedule.total_steps)
    reference = build_reference(cfg.reference, classifier, sorted({r.classes[0] for r in rows if len(r.classes) == 1})) \
        if cfg.get("reference") else None  # before optimising: missing reference data fails early
    loggers = build_loggers(cfg.get("logger"))
    every = int(cfg.get("checkpoint_every") or 0)
    callbacks = [ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="last", every_n_train_steps=every,
                                 enable_version_counter=False)] if every > 0 else []
    trainer: pl.Trainer = build(cfg.trainer, max_steps=module.schedule.total_steps, max_epochs=1,
                                logger=loggers or False, num_sanity_val_steps=0, callbacks=callbacks,
                                enable_checkpointing=bool(callbacks),
                                use_distributed_sampler=False)  # every rank runs every step
    last = out_dir / "checkpoints" / "last.ckpt"
    resume = str(last) if every > 0 and last.is_file() else None
    if resume:
        log.info("resuming from %s", last)
    if trainer.is_global_zero:
        save_config(cfg, out_dir / "config.yaml")
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    try:
        trainer.fit(module, ckpt_path=resume, weights_only=True)
        if not trainer.is_global_zero:
            return None
        images = module.final_images().cpu()
        records = prototype_records(classifier, images, rows)
        export_prototypes(out_dir, images, rows, records)
        log_to_loggers(loggers, out_dir, images, records)
        if reference is not None:
            evaluate_run(out_dir, classifier, images, rows, reference, loggers)
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # complete: nothing left to resume
    finally:
        finish_loggers(loggers)
    seconds = time.perf_counter() - start
    log.info("done in %.1f s: top-1 %d/%d, mean target prob %.3f", seconds,
             sum(r["target_rank"] == 1 for r in records), len(records),
             sum(r["target_prob"] for r in records) / len(records))
    return GenerationResult(out_dir, images, rows, records, seconds)
