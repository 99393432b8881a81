"""One generation run, from a composed config to files in the run folder."""

from __future__ import annotations

import logging
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from ..callbacks import ProgressReporter, StateCheckpoint
from ..callbacks.progress import resolve_mode
from ..errors import ConfigError, ProtoscopeError, RunInterrupted
from ..evaluation import evaluate_prototypes, log_evaluation, write_evaluation
from ..guidance import attach_guide, reference_photos
from .export import export_prototypes, image_filename, log_to_loggers, prototype_records, summary_line
from ..hydra_utils import build, build_loggers, finish_loggers, save_config
from ..io import write_text
from ..loggers import wandb_run_settings
from ..models import Classifier, load_model
from ..models.store import pin_models
from ..noise import silence_known_noise
from .module import PrototypeModule, Schedule
from .speed import SpeedSettings
from ..records import (RunRecord, check_same_recipe, hydra_job, is_rank_zero, one_line, recipe_differences,
                       recipe_of)
from ..reference import build_reference
from .rows import Row
from .sharding import check_world_size, plan_rows, rank_file
from .targets import resolve_run_rows
from ..studies.runs import run_metrics
from ..transforms import RandomAffine

log = logging.getLogger("protoscope")
silence_known_noise()  # at import: in spawned DDP processes too

CHECKPOINT = Path("checkpoints") / "last.ckpt"


@dataclass
class GenerationResult:
    out_dir: Path
    images: torch.Tensor
    rows: list[Row]
    records: list[dict[str, Any]]
    seconds: float
    metrics: dict[str, float]
    skipped: bool = False


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
    return classifier, resolve_run_rows(cfg, classifier, size), size


def build_module(cfg: DictConfig, classifier: Classifier, rows: list[Row], size: int) -> PrototypeModule:
    """The module for ``cfg``; each process creates the parameterisation of its own rows in ``setup``."""
    transform = build(cfg.transform) if cfg.get("transform") else RandomAffine()
    # A stack chosen on the command line (regularizer=[tv]) replaces the recipe's: the recipe's settings of the
    # terms it leaves out (weights without a _target_) and their anneal factors are not used.
    settings = {name: sub for name, sub in (cfg.get("regularizer") or {}).items() if sub}
    regularizers = {name: build(sub) for name, sub in settings.items() if "_target_" in sub}
    schedule = OmegaConf.to_container(cfg.schedule, resolve=True)
    schedule["anneal"] = {name: factor for name, factor in (schedule.get("anneal") or {}).items()
                          if name in regularizers or name not in settings}
    param_ops = [build(sub) for sub in (cfg.get("param_ops") or {}).values() if sub]
    speed = cfg.get("speed")
    return PrototypeModule(
        classifier=classifier,
        rows=rows,
        param=build(cfg.param),
        size=size,
        transform=transform,
        objective=build(cfg.objective),
        regularizers=regularizers,
        optimizer=build(cfg.optimizer),
        schedule=Schedule(**schedule),
        seed=int(cfg.seed),
        log_every=int(cfg.trainer.get("log_every_n_steps", 25)),
        speed=SpeedSettings.from_config(OmegaConf.to_container(speed, resolve=True) if speed is not None else None),
        param_ops=param_ops,
    )


def evaluate_run(out_dir: Path, classifier: Classifier, images: torch.Tensor, rows: list[Row],
                 reference: Any, loggers: list[Any], note: str | None = None) -> None:
    """Path similarity of the single-class prototypes against the reference, into ``out_dir/evaluation``
    (``note``: a line above its summary.md, e.g. that a guided run used photos)."""
    keep = [i for i, r in enumerate(rows) if len(r.classes) == 1]
    if not keep:
        log.info("no single-class prototypes to evaluate")
        return
    result = evaluate_prototypes(classifier, images[keep], [rows[i].classes[0] for i in keep],
                                 [rows[i].seed for i in keep], reference,
                                 files=[f"prototypes/{image_filename(rows[i])}" for i in keep])
    files = write_evaluation(result, out_dir / "evaluation")
    if note:
        write_text(files["summary"], f"**{note}**\n\n" + files["summary"].read_text())
    log_evaluation(loggers, files, result, None)
    log.info("path similarity: mean spearman %.3f (percentile %.1f), mean l1 %.3f (percentile %.1f)",
             float(result.layer_mean("spearman").mean()), float(result.percentile["spearman"].mean()),
             float(result.layer_mean("l1").mean()), float(result.percentile["l1"].mean()))


def class_reference(cfg: DictConfig, rows: list[Row]) -> list[int] | None:
    """The classes to build the reference for, or None: no reference, or rows without a class target (a
    note; an error when the command line asked for the reference)."""
    if not cfg.get("reference"):
        return None
    if rows[0].target.is_class:
        return sorted({r.classes[0] for r in rows if len(r.classes) == 1})
    kind = rows[0].target.kind
    asked = any(o.lstrip("+~").startswith("reference") for o in hydra_job().get("overrides", []))
    message = (f"the evaluation against natural class images needs class targets; this run's rows are {kind} "
               "targets, which have no class")
    if asked:
        raise ConfigError(f"{message}: drop reference=")
    log.info("%s: the evaluation is skipped", message)
    return None


def device_name(trainer: pl.Trainer) -> str:
    """The device the run optimised on, in words (and how many processes shared the rows)."""
    device = trainer.strategy.root_device
    name = f"cuda:{device.index} {torch.cuda.get_device_name(device)}" if device.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)
    return name if trainer.world_size == 1 else f"{name} x {trainer.world_size} processes"


def resume_hint(out_dir: Path, command: str = "protoscope-generate") -> str:
    """The command that continues this run: its overrides and its folder."""
    job = hydra_job()
    if job.get("multirun"):
        return f"; start the same sweep again with hydra.sweep.dir={Path(job['sweep_dir'])} to resume it"
    args = [o for o in job.get("overrides", []) if not o.startswith("hydra.run.dir=")]
    return f"; resume with: {command} " + " ".join(shlex.quote(a) for a in [*args, f"hydra.run.dir={out_dir}"])


def checked_resume(checkpoint: Path, recipe: dict[str, Any], world_size: int = 1) -> tuple[str | None, dict[str, Any]]:
    """The saved state to resume from and its row plan (``shard``), or ``(None, {})`` when there is none.

    The state is one file per process (``sharding.rank_file``); one saved by another number of processes,
    or made with another ``recipe``, is refused with a ConfigError naming what differs.
    """
    if not check_world_size(checkpoint, world_size):
        return None, {}
    first = rank_file(checkpoint, 0, world_size)
    try:
        saved = torch.load(first, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise ConfigError(f"cannot read the resume state {first} ({type(exc).__name__}); delete it to start "
                          "this run from the beginning") from exc
    old = (saved.get("protoscope") or {}).get("recipe") if isinstance(saved, dict) else None
    if old is None:
        raise ConfigError(f"{first} holds no protoscope recipe; delete it to start this run from the beginning")
    diff = recipe_differences(old, recipe)
    if diff:
        raise ConfigError(
            f"{first} was saved by a run with another config ({'; '.join(diff[:4])}"
            f"{'; ...' if len(diff) > 4 else ''}): resume with the same settings, or start a new folder")
    return str(checkpoint), dict(saved["protoscope"].get("shard") or {})


def resumed_rows_per_chunk(speed: SpeedSettings, shard: dict[str, Any]) -> None:
    """A resumed run keeps the chunk size its state was saved with (``auto`` adopts it; another number is refused)."""
    if not shard:
        return
    saved = shard.get("rows_per_chunk")
    if speed.rows_per_chunk == "auto":
        speed.rows_per_chunk = saved
    elif speed.rows_per_chunk != saved:
        raise ConfigError(f"the saved state was made with speed.rows_per_chunk={saved if saved else 'null'}: resume "
                          f"with that setting (or auto), or start a new folder")


def planned_steps(module: PrototypeModule, world_size: int) -> int:
    """Steps over all chunks, as far as known before start-up (``rows_per_chunk=auto`` decides on the device)."""
    rows_per_chunk = module.speed.rows_per_chunk
    chunks = 1 if rows_per_chunk == "auto" else plan_rows(module.rows, world_size, rows_per_chunk).num_chunks
    return chunks * module.schedule.total_steps


def worker_error(exc: BaseException) -> BaseException:
    """The protoscope error a spawned process raised (``ddp_spawn``), rebuilt from its traceback text."""
    import re

    from .. import errors

    text = str(exc)
    found = re.findall(r"^protoscope\.errors\.(\w+): (.*)$", text, flags=re.M)
    if not found:
        return exc
    name, message = found[-1]
    cls = getattr(errors, name, None)
    if cls is RunInterrupted:
        m = re.match(r"(SIG\w+) at step (\d+)", message)
        import signal

        return RunInterrupted(getattr(signal, m.group(1)), int(m.group(2))) if m else exc
    if isinstance(cls, type) and issubclass(cls, ProtoscopeError):
        return cls(message)
    return exc


def finished_result(out_dir: Path, record: RunRecord, recipe: dict[str, Any]) -> GenerationResult:
    """A completed run in ``out_dir``: skipped when made with ``recipe``, refused otherwise."""
    check_same_recipe(out_dir, record, recipe)
    import json

    saved = torch.load(out_dir / "prototypes.pt", map_location="cpu", weights_only=True)
    records = json.loads((out_dir / "metrics.json").read_text())
    return GenerationResult(out_dir, saved["images"], [], records, 0.0, dict(record.data.get("metrics") or {}),
                            skipped=True)


def _loggers(cfg: DictConfig, job: dict[str, Any]) -> list[Any]:
    settings = wandb_run_settings(job, cfg.get("tag"), cfg.get("study_name"))
    return build_loggers(cfg.get("logger"), wandb=settings)


def _callbacks(cfg: DictConfig, module: PrototypeModule, out_dir: Path, record: RunRecord) -> list[pl.Callback]:
    every, minutes = int(cfg.get("checkpoint_every") or 0), float(cfg.get("checkpoint_minutes") or 0)
    progress = cfg.get("progress") or {}
    mode = resolve_mode(str(progress.get("mode", "auto")), bool(cfg.trainer.get("enable_progress_bar", True)))
    return [
        StateCheckpoint(out_dir / CHECKPOINT, every_n_steps=every, every_minutes=minutes,
                        on_saved=record.saved_step, sync_every=module.log_every),
        ProgressReporter(module.schedule.total_steps, mode, int(progress.get("every_n_steps", 50))),
    ]


def run_generation(cfg: DictConfig, callbacks: Sequence[pl.Callback] = ()) -> GenerationResult | None:
    """Generate prototypes for ``cfg`` and write them to ``cfg.paths.output_dir``.

    The folder's ``run.json`` records the run from start to end. A folder that already holds this
    completed run is skipped; one with a saved state of the same config resumes from it. Returns the
    result on the global-zero process, None on other ranks.
    """
    start = time.perf_counter()
    out_dir = Path(cfg.paths.output_dir)
    record = RunRecord(out_dir, "generate", enabled=is_rank_zero())
    pin_models(cfg, earlier=record.data.get("model"))  # the recipe, config.yaml, run.json name the weights file
    recipe = recipe_of(cfg)
    if record.status == "completed":
        return finished_result(out_dir, record, recipe)
    if is_rank_zero() and record.held_by_other_process():  # ranks > 0 (trainer=ddp) share rank 0's folder
        raise ConfigError(f"{out_dir} is in use by process {record.data['pid']} on this machine; "
                          "wait for it or choose another folder")
    job = hydra_job()
    record.start(cfg, recipe)
    try:
        result = _generate(cfg, out_dir, record, job, callbacks)
    except RunInterrupted as exc:
        record.end("interrupted", one_line(exc))
        raise RunInterrupted(exc.signum, exc.step, resume_hint(out_dir)) from None
    except (KeyboardInterrupt, SystemExit) as exc:  # e.g. a second Ctrl-C: stopped without saving
        record.end("interrupted", f"{type(exc).__name__}: stopped before the state was saved")
        raise
    except BaseException as exc:
        record.end("failed", one_line(exc))
        raise
    if result is None:
        return None
    seconds = time.perf_counter() - start
    result.seconds = seconds
    log.info("done in %.1f s: %s", seconds, summary_line(result.records))
    return result


def _generate(cfg: DictConfig, out_dir: Path, record: RunRecord, job: dict[str, Any],
              extra_callbacks: Sequence[pl.Callback]) -> GenerationResult | None:
    classifier, rows, size = prepare(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = build_module(cfg, classifier, rows, size)
    module.recipe = {**record.data["recipe"], "weights": classifier.weights_digest}
    module.chunk_dir = out_dir / CHECKPOINT.parent / "chunks"
    module.result_path = out_dir / CHECKPOINT.parent / "result.pt"
    loggers = _loggers(cfg, job)
    (out_dir / CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
    trainer: pl.Trainer = build(cfg.trainer, max_steps=-1, max_epochs=1,
                                logger=loggers or False, num_sanity_val_steps=0,
                                callbacks=[*_callbacks(cfg, module, out_dir, record), *extra_callbacks],
                                enable_checkpointing=False, enable_progress_bar=False,
                                use_distributed_sampler=False)  # every rank runs every step (of its rows)
    resume, shard = checked_resume(out_dir / CHECKPOINT, module.recipe, trainer.world_size)
    resumed_rows_per_chunk(module.speed, shard)
    device = trainer.strategy.root_device
    kind = rows[0].target.kind
    log.info("generating %d prototypes (%d %s targets x %d seeds) at %dpx for %d steps on %s",
             len(rows), len(rows) // int(cfg.seeds_per_class), kind, int(cfg.seeds_per_class), size,
             module.schedule.total_steps, device_name(trainer))
    classes = class_reference(cfg, rows)
    reference = build_reference(cfg.reference, classifier, classes, device=device) \
        if classes is not None else None  # missing data fails early
    guide = attach_guide(cfg, classifier, module.renderer.terms, sorted({c for r in rows for c in r.classes}), device)
    if resume:
        log.info("resuming from %s", resume)
    if trainer.is_global_zero:
        save_config(cfg, out_dir / "config.yaml")
        record.update(total_steps=planned_steps(module, trainer.world_size), device=device_name(trainer),
                      targets=list(dict.fromkeys(r.describe() for r in rows)))
        if guide is not None:  # which photos guided, and which score: two disjoint parts of the reference
            record.update(guide=guide.record(classifier.class_names, cfg.guide.part),
                          scoring_photos=reference_photos(cfg.reference, classifier, guide.classes))
        for lg in loggers:
            lg.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "job": job})
    try:
        try:
            trainer.fit(module, ckpt_path=resume, weights_only=True)
        except torch.multiprocessing.ProcessRaisedException as exc:  # ddp_spawn: a process raised
            raise worker_error(exc) from None
        if not trainer.is_global_zero:
            return None
        images, steps = module.final_result()
        images = images.cpu()
        classifier.to(device)  # the final measurements run where the optimisation ran
        try:
            records = prototype_records(classifier, images, rows, seed=int(cfg.seed),
                                        objective=module.renderer.objective)
            export_prototypes(out_dir, images, rows, records)
            log_to_loggers(loggers, out_dir, images, records)
            if reference is not None:
                evaluate_run(out_dir, classifier, images, rows, reference, loggers, None if guide is None else
                             f"Guided: uses {guide.n_images} photos per class (the reference's {cfg.guide.part} part; "
                             f"scored on the {cfg.reference.part} part)")
        finally:
            classifier.to("cpu")
        metrics = run_metrics(out_dir)
        record.end("completed", step=steps, metrics=metrics)
        shutil.rmtree(out_dir / CHECKPOINT.parent, ignore_errors=True)  # complete: nothing left to resume
    finally:
        finish_loggers(loggers)
    return GenerationResult(out_dir, images, rows, records, 0.0, metrics)
