"""One training run: data, network, Lightning fit/test, then checkpoint and metrics files."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from torch import nn

from ..callbacks import ProgressReporter, StateCheckpoint
from ..callbacks.progress import resolve_mode
from ..errors import ConfigError, RunInterrupted
from ..hydra_utils import build, build_loggers, finish_loggers, save_config
from ..io import write_json, write_png, write_torch
from ..models.store import recipe_hash, save_model, training_recipe
from ..noise import silence_known_noise
from ..shortcuts import Planting, plant_splits, shortcut_accuracies, shortcut_plan
from .data import TensorDataModule
from .task import ClassifierTask

log = logging.getLogger("protoscope")
silence_known_noise()  # at import: in spawned DDP processes too
STATE_FILE = Path("checkpoints") / "last.ckpt"  # saved on SIGINT/SIGTERM; the same command resumes from it
STATE_RECIPE = Path("checkpoints") / "last.json"  # the recipe hash of that state (another recipe is refused)


@dataclass
class TrainResult:
    """What a run produced: the trained task, its metrics and the files written."""

    task: ClassifierTask
    data: TensorDataModule
    metrics: dict
    files: dict[str, Path] = field(default_factory=dict)


def build_network(model_cfg: DictConfig, num_classes: int, seed: int) -> nn.Module:
    """Instantiate ``model.arch`` for ``num_classes`` outputs (its checkpoint is ignored)."""
    arch = model_cfg.arch
    overrides: dict = {}
    if "num_classes" in arch and int(arch.num_classes) != num_classes:
        log.warning(
            "model.arch.num_classes=%s but the data has %d classes: training with %d. "
            "Load the checkpoint with model.arch.num_classes=%d.", arch.num_classes, num_classes, num_classes, num_classes,
        )
        overrides["num_classes"] = num_classes
    if "init_seed" in arch:
        overrides["init_seed"] = seed
    if "in_channels" in arch and int(arch.in_channels) != int(model_cfg.channels):
        raise ConfigError(f"model.arch.in_channels={arch.in_channels} differs from model.channels={model_cfg.channels}")
    return build(arch, **overrides)


def train(cfg: DictConfig) -> TrainResult:
    """Train ``cfg.model.arch`` on ``cfg.train_data``; write ``model.pt``, ``metrics.json``, ``classes.json``
    in the run folder and keep the model in ``paths.models_dir`` as ``<model.name>-<recipe hash>.pt``.

    SIGINT/SIGTERM: the step under way finishes, the state is saved to ``<run>/checkpoints/last.ckpt``
    and :class:`RunInterrupted` names the command that resumes (the same one with ``hydra.run.dir``).
    Progress: log lines every ``progress.every_n_steps`` steps off a terminal or with the bar off.

    With ``cfg.shortcut`` set, a mark is planted on a share of one class's images first (``mark.pt`` is
    written too) and ``metrics.json`` gets a ``shortcut`` entry with the accuracies that reveal it.
    """
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    data: TensorDataModule = build(cfg.train_data)
    classes = data.class_names
    channels = int(cfg.model.channels)
    mean, std = list(cfg.model.mean), list(cfg.model.std)
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"model.mean/model.std need {channels} values (model.channels), got {mean}/{std}")
    planting = plant_configured_shortcut(cfg, data, classes)
    net = build_network(cfg.model, len(classes), int(cfg.seed))
    task = ClassifierTask(
        net, len(classes), mean, std, lr=float(cfg.lr), weight_decay=float(cfg.weight_decay),
        schedule=str(cfg.schedule), hflip=bool(cfg.augment.hflip), max_shift=int(cfg.augment.max_shift),
    )
    loggers = build_loggers(cfg.get("logger"))
    out = Path(str(cfg.paths.output_dir))
    digest = recipe_hash(training_recipe(cfg))
    resume = checked_resume(out, digest)
    state = StateCheckpoint(out / STATE_FILE, on_saved=lambda step: write_json(out / STATE_RECIPE, {
        "recipe_hash": digest, "step": step}))
    progress = cfg.get("progress") or {}
    bar = bool(cfg.trainer.get("enable_progress_bar", True))
    mode = resolve_mode(str(progress.get("mode", "auto")), bar)
    reporter = ProgressReporter(None, "none" if mode == "bar" else mode, int(progress.get("every_n_steps", 50)),
                                desc="train")  # mode bar: Lightning's own bar (loss, accuracy)
    trainer: pl.Trainer = build(cfg.trainer, max_epochs=int(cfg.epochs), logger=loggers or False,
                                callbacks=[state, reporter], enable_progress_bar=mode == "bar")
    if resume is not None:
        log.info("continuing from the state saved in %s", resume)
    start = time.perf_counter()
    try:
        trainer.fit(task, datamodule=data, ckpt_path=str(resume) if resume is not None else None)
        if state.received is not None:  # the signal came in the last step: the fit is complete, stop here
            state.save(trainer)
            raise RunInterrupted(state.received, trainer.global_step)
        trainer.test(task, datamodule=data, verbose=False)
    except RunInterrupted as exc:
        from ..generation.pipeline import resume_hint

        raise RunInterrupted(exc.signum, exc.step, resume_hint(out, "protoscope-train")) from None
    finally:
        finish_loggers(loggers)
    for name in (STATE_FILE, STATE_RECIPE):  # the run is complete: its resume state is no longer needed
        (out / name).unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    results = task.test_results
    metrics = {
        "test_accuracy": results["accuracy"],
        "per_class_accuracy": dict(zip(classes, results["per_class"])),
        "test_split": data.test_split_name,
        "test_samples": len(data.splits["test"][1]),
        "train_samples": len(data.splits["train"][1]),
        "epochs": int(cfg.epochs),
        "seconds": round(seconds, 2),
        "classes": classes,
        "model_hash": recipe_hash(training_recipe(cfg)),
    }
    if planting is not None:
        task.eval()
        metrics["shortcut"] = {**planting.plan.describe(), "marked_images": planting.counts(),
                               **shortcut_accuracies(lambda x: task(x.to(task.device)), planting.clean_test,
                                                     planting.plan)}
        log.info("shortcut on %s: accuracy on its images without the mark %.4f, with the mark %.4f; "
                 "other classes flipped to it by the mark: %.4f", planting.plan.target_name,
                 metrics["shortcut"]["target_accuracy_unmarked"], metrics["shortcut"]["target_accuracy_marked"] or 0.0,
                 metrics["shortcut"]["flip_rate"] or 0.0)
    files: dict[str, Path] = {}
    if trainer.is_global_zero:
        files = _write_outputs(cfg, net, metrics, classes, planting)
    log.info("test accuracy %.4f (%s split) after %d epochs in %.1f s", metrics["test_accuracy"],
             metrics["test_split"], metrics["epochs"], seconds)
    return TrainResult(task, data, metrics, files)


def checked_resume(out: Path, digest: str) -> Path | None:
    """The saved training state of this run folder, if any; one saved with another recipe is refused."""
    state = out / STATE_FILE
    if not state.is_file():
        return None
    import json

    try:
        saved = json.loads((out / STATE_RECIPE).read_text()).get("recipe_hash")
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved != digest:
        raise ConfigError(f"{state} was saved by a training with other settings (recipe {saved or 'unknown'}, this "
                          f"one {digest}): resume with the same command, or choose another folder (hydra.run.dir)")
    return state


def plant_configured_shortcut(cfg: DictConfig, data: TensorDataModule, classes: list[str]) -> Planting | None:
    """Plant ``cfg.shortcut`` (if set) into the data module's splits; the mark is checked before data loads."""
    if not cfg.get("shortcut"):
        return None
    plan = shortcut_plan(cfg.shortcut, classes, int(cfg.model.input_size), int(cfg.model.channels), int(cfg.seed))
    data.setup()
    data.splits, planting = plant_splits(data.splits, plan)
    return planting


def _write_outputs(cfg: DictConfig, net: nn.Module, metrics: dict, classes: list[str],
                   planting: Planting | None = None) -> dict[str, Path]:
    out = Path(str(cfg.paths.output_dir))
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    recipe = training_recipe(cfg)
    files = {
        "model": write_torch(out / "model.pt", state),
        "metrics": write_json(out / "metrics.json", metrics),
        "classes": write_json(out / "classes.json", classes),
    }
    if planting is not None:  # the mark, for protoscope-compare mark=file mark.path=<run>/mark.pt
        files["mark"] = write_torch(out / "mark.pt", planting.plan.mark.to_state())
        files["mark_png"] = write_png(out / "mark.png", planting.plan.mark.picture())
    save_config(cfg, out / "config.yaml")
    models_dir = cfg.paths.get("models_dir")
    if models_dir:  # the kept copy, named by its recipe: another recipe never replaces it
        info = {"classes": classes, "test_accuracy": metrics["test_accuracy"], "test_split": metrics["test_split"],
                "shortcut": recipe["shortcut"], "run_dir": str(out.resolve())}
        stored = save_model(models_dir, str(cfg.model.name), state, recipe, info)
        files["stored"] = stored.path
        log.info("model kept as %s (select it with model.name=%s)", stored.path, stored.hash)
    save_to = cfg.get("save_to") if planting is None else cfg.shortcut.get("save_to")
    if save_to:
        ckpt = Path(str(save_to)).expanduser()
        files["checkpoint"] = write_torch(ckpt, state)
        files["checkpoint_classes"] = write_json(ckpt.with_name(f"{ckpt.stem}.classes.json"), classes)
        log.info("checkpoint written to %s (class names in %s)", ckpt, files["checkpoint_classes"].name)
    return files
