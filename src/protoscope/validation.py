"""Checks of a composed generate config that need no model weights and no data (run before start-up).

Each raises a :class:`~protoscope.errors.ProtoscopeError` whose message names the problem and the fix.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import CheckpointError, ConfigError

PROGRESS_MODES = ("auto", "bar", "log", "none")
GPU_ACCELERATORS = ("gpu", "cuda")


def check_progress(cfg: DictConfig) -> None:
    mode = (cfg.get("progress") or {}).get("mode", "auto")
    if mode not in PROGRESS_MODES:
        raise ConfigError(f"progress.mode={mode}: choose one of {', '.join(PROGRESS_MODES)}")


def check_accelerator(trainer: Mapping[str, Any]) -> None:
    """``trainer=gpu`` needs a CUDA GPU that torch can see."""
    if str(trainer.get("accelerator", "auto")).lower() not in GPU_ACCELERATORS:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("trainer=gpu, but torch sees no CUDA GPU on this machine: use trainer=cpu (or "
                          "trainer=default, which picks a GPU when there is one)")


def check_deterministic(trainer: Mapping[str, Any]) -> None:
    """``trainer.deterministic=true`` cannot hold on a GPU: the batched transforms (``grid_sample``) and the
    blur's reflect padding have no deterministic CUDA backward (seen on an H100: torch raises mid-run)."""
    if not trainer.get("deterministic") or str(trainer.get("accelerator", "auto")).lower() not in GPU_ACCELERATORS:
        return
    raise ConfigError("trainer.deterministic=true on a GPU: the transforms' grid_sample and the blur have no "
                      "deterministic CUDA backward, so GPU runs repeat only up to that nondeterminism; drop it "
                      "(trainer.deterministic=false) or use trainer=cpu for bit-identical runs")


def start_method(strategy: Any) -> str | None:
    """How a DDP strategy setting starts its processes (``popen``, ``spawn``, ``fork``), None for others."""
    if isinstance(strategy, Mapping) or OmegaConf.is_dict(strategy):
        target = str(strategy.get("_target_", ""))
        if target.endswith(("RowShardedStrategy", "DDPStrategy")):
            return str(strategy.get("start_method", "popen"))
        return None
    name = str(strategy)
    if not name.startswith("ddp"):
        return None
    return "spawn" if "spawn" in name else "fork" if ("fork" in name or "notebook" in name) else "popen"


def check_strategy(trainer: Mapping[str, Any], multirun: bool) -> None:
    """``strategy=ddp`` re-runs the command line in every rank: in a local sweep that would re-launch
    the whole sweep. Under SLURM (submitit) the ranks are SLURM tasks and nothing is re-run."""
    method = start_method(trainer.get("strategy", "auto"))
    if multirun and method == "popen" and "SLURM_JOB_ID" not in os.environ:
        raise ConfigError("trainer=ddp inside a -m sweep would re-launch the sweep in every rank: use "
                          "trainer=ddp_spawn for a local sweep, or hydra/launcher=slurm (ranks run as SLURM tasks)")


def _several(devices: Any) -> bool:
    """Whether a ``trainer.devices`` value names more than one device (-1 and "auto" are checked at start-up)."""
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices) > 1
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()]) > 1
    return text.isdigit() and int(text) > 1


def check_row_strategy(trainer: Mapping[str, Any]) -> None:
    """Several processes need the row-sharded strategy (each owns its rows), not one of Lightning's by name."""
    strategy = trainer.get("strategy", "auto")
    if isinstance(strategy, Mapping) or OmegaConf.is_dict(strategy):
        return
    several = _several(trainer.get("devices", 1)) or int(trainer.get("num_nodes", 1) or 1) > 1
    if str(strategy).startswith(("ddp", "fsdp", "deepspeed")) or (str(strategy) == "auto" and several):
        raise ConfigError(f"trainer.strategy={strategy} with trainer.devices={trainer.get('devices')} would copy every "
                          "prototype row to every process: use trainer=ddp or trainer=ddp_spawn (each process owns "
                          "its rows; no gradient communication)")


# Precisions that make every parameter low-precision (Lightning's "-true" settings).
TRUE_LOW_PRECISION = ("bf16-true", "16-true", "transformer-engine", "transformer-engine-float16")


def check_precision(cfg: DictConfig) -> None:
    """A low-precision parameterisation that cannot work is refused; mixed precision is the fix."""
    precision = str(cfg.trainer.get("precision", "32-true"))
    target = str((cfg.get("param") or {}).get("_target_", ""))
    if precision in TRUE_LOW_PRECISION and target.endswith("FourierParam"):
        raise ConfigError(f"trainer.precision={precision} with param=fourier: the Fourier spectrum would be "
                          f"{precision.split('-')[0]}, which its complex transform cannot use; use "
                          "trainer.precision=bf16-mixed (the network in bf16, the parameterisation and optimiser "
                          "state in fp32) or param=pixel")
    accelerator = str(cfg.trainer.get("accelerator", "auto")).lower()
    if precision in ("16-mixed", "16") and accelerator == "cpu":
        raise ConfigError(f"trainer.precision={precision} needs a GPU: on a CPU use trainer.precision=bf16-mixed")


def check_speed(cfg: DictConfig) -> None:
    """The ``speed`` settings are valid (rows_per_chunk, channels_last, compile, memory_fraction)."""
    from .generation.speed import SpeedSettings

    speed = cfg.get("speed")
    SpeedSettings.from_config(OmegaConf.to_container(speed, resolve=True) if speed is not None else None)


def check_checkpoint_file(model: Mapping[str, Any]) -> None:
    """``model.checkpoint`` exists, or the models folder holds the model ``model.name`` selects."""
    from .models.store import select_model, uses_models_dir

    if uses_models_dir(model):
        select_model(model)  # one line listing the stored models when none matches
        return
    path = model.get("checkpoint")
    if path and not Path(str(path)).expanduser().is_file():
        raise CheckpointError(f"checkpoint {path} of model {model.get('name')} does not exist: "
                              "set model.checkpoint to a state-dict file")


def class_names_of(model: Mapping[str, Any]) -> list[str]:
    from .models.class_names import named_class_list

    spec = model.get("class_names")
    spec = OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else spec
    num = model.get("num_classes") or (model.get("arch") or {}).get("num_classes")
    try:
        return named_class_list(spec, num)
    except ValueError as exc:
        raise ConfigError(f"model.class_names: {exc}") from None


def check_classes(cfg: DictConfig) -> None:
    """For class objectives, ``targets`` (else ``classes``) are classes of the model (names, indices, hybrids
    or ``all``); feature targets are checked against the loaded model (``generation.targets``)."""
    from .generation.rows import resolve_rows
    from .generation.targets import objective_kind

    if objective_kind(cfg) != "class":
        return
    classes = cfg.get("targets") if cfg.get("targets") is not None else cfg.classes
    classes = OmegaConf.to_container(classes) if OmegaConf.is_config(classes) else classes
    resolve_rows(classes, class_names_of(cfg.model), int(cfg.seeds_per_class))


def check_reference_root(reference: Mapping[str, Any] | None) -> None:
    """A reference was chosen if any of its settings are given, ``reference.root`` is a folder, and every image
    in it can be read."""
    if reference and "_target_" not in reference:
        given = ", ".join(f"reference.{k}" for k in reference)
        raise ConfigError(f"{given} given but no reference chosen: add reference=<name> (conf/reference/, e.g. "
                          "reference=imagenette, or reference=image_folder reference.root=<folder>)")
    root = (reference or {}).get("root")
    if root and not Path(str(root)).expanduser().is_dir():
        raise ConfigError(f"reference.root={root} is not a folder: point it at natural images "
                          "(one sub-folder per class)")
    if root:
        extensions = (reference or {}).get("extensions")
        check_images_readable(Path(str(root)).expanduser(), "reference.root",
                              tuple(extensions) if extensions else IMAGE_SUFFIXES)


def unreadable_image_error(path: Path, exc: BaseException) -> ConfigError:
    """The one line for an image file that cannot be decoded (protoscope stops rather than skip it)."""
    reason = str(exc).splitlines()[0] if str(exc) else ""
    return ConfigError(f"image {path} cannot be read ({type(exc).__name__}{': ' + reason if reason else ''}): "
                       "replace or delete it (protoscope stops rather than skip an image, so results always use "
                       "every image of the folder)")


# The suffixes of the image files protoscope reads (conf/reference/image_folder.yaml: extensions).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def check_images_readable(folder: Path, key: str = "images", suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> int:
    """Open every image file under ``folder`` (header and structure, without decoding the pixels); the first
    one PIL cannot read is a ConfigError naming it. Returns the number of images checked."""
    from PIL import Image

    count = 0
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") or path.suffix.lower() not in suffixes or not path.is_file():
            continue
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a broken file
            raise unreadable_image_error(path, exc) from None
        count += 1
    return count


def check_evaluate_folders(cfg: DictConfig) -> None:
    """protoscope-evaluate's inputs, cheaply (no torch): one of run_dir/images, image folders that exist and
    whose every image can be read, and a readable reference.root."""
    if bool(cfg.get("run_dir")) == bool(cfg.get("images")):
        raise ConfigError("give exactly one of run_dir=<protoscope-generate run folder> or images=<folder>")
    for key in ("images", "baseline_images"):
        if cfg.get(key) and not Path(str(cfg.get(key))).expanduser().is_dir():
            raise ConfigError(f"{key}={cfg.get(key)} is not a folder of images")
        if cfg.get(key):
            check_images_readable(Path(str(cfg.get(key))).expanduser(), key)
    check_reference_root(cfg.get("reference"))


def check_sweep_metric(cfg: DictConfig) -> None:
    metric = cfg.get("sweep_metric") or {}
    if metric.get("direction", "maximize") not in ("maximize", "minimize"):
        raise ConfigError(f"sweep_metric.direction={metric.get('direction')}: use maximize or minimize")


def validate_generate(cfg: DictConfig, multirun: bool, elsewhere: bool = False) -> None:
    """Everything about a generate config that can be checked without weights or data. ``elsewhere``: the
    jobs run on other machines (SLURM), so the checks of this machine (a GPU, DDP re-launching the command)
    are left to each job (:func:`check_runtime`)."""
    check_progress(cfg)
    check_sweep_metric(cfg)
    check_reference_root(cfg.get("reference"))  # before the checks that import torch
    if not elsewhere:
        check_strategy(cfg.trainer, multirun)
    check_row_strategy(cfg.trainer)
    check_precision(cfg)
    check_speed(cfg)
    check_classes(cfg)
    check_checkpoint_file(cfg.model)
    check_deterministic(cfg.trainer)
    if not elsewhere:
        check_accelerator(cfg.trainer)


def check_runtime(cfg: DictConfig) -> None:
    """The checks that depend on where the job runs (inside each job of a sweep, too)."""
    from .cli import in_multirun

    check_strategy(cfg.trainer, in_multirun())
    check_accelerator(cfg.trainer)


def sweep_value(cfg: DictConfig, metrics: Mapping[str, float]) -> float:
    """The value a Hydra sweeper optimises: ``sweep_metric.name`` of the run's metrics; a list of names gives
    the weakest of them (the minimum when maximising, else the maximum: every goal must be met).

    With ``sweep_metric.require_top1``, a run whose prototypes are not all top-1 returns
    ``sweep_metric.infeasible`` instead (the constraint). A metric the run lacks gives NaN.
    """
    spec = cfg.get("sweep_metric") or {}
    name = spec.get("name", "target_prob")
    names = [str(n) for n in name] if isinstance(name, (list, tuple, ListConfig)) else [str(name)]
    if spec.get("require_top1") and metrics.get("all_top1", 0.0) < 1.0:
        return float(spec.get("infeasible", -1.0))
    values = [metrics.get(n) for n in names]
    if any(v is None for v in values):
        return math.nan
    weakest = min if spec.get("direction", "maximize") == "maximize" else max
    return float(weakest(float(v) for v in values))
