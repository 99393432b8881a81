"""The allowed range of every numeric setting, per config group, in one declarative table.

``check_ranges(cfg)`` walks the composed config of any command (generate, train, evaluate, report,
compare, lucent) and checks each numeric value against the first :data:`RANGES` pattern that matches
its dotted key (``*`` matches one level: ``regularizer.*.weight``). A value out of range is a
:class:`~protoscope.errors.ConfigError` naming the key, the value, the bound and a valid setting.
Keys whose value is an interpolation (``${batch_size}``) are checked where they point; ``null``
means "not set" and is always allowed. ``image_size`` is bounded by the model's minimum
(``model.min_input_size`` if the model config sets it, else :data:`MIN_IMAGE_SIZE`).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import ConfigError

MIN_IMAGE_SIZE = 8  # the smallest image the convolutional models of conf/model/ accept


@dataclass(frozen=True)
class Range:
    """``low <= value`` (``low < value`` if ``open_low``), ``value <= high``; ``integer``: a whole number."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    integer: bool = False
    why: str = ""

    def problem(self, value: float) -> str | None:
        """What is wrong with ``value`` (None if it is in range)."""
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if self.integer and (isinstance(value, float) and not value.is_integer()):
            return "must be a whole number"
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return f"must be {'>' if self.open_low else '>='} {_num(self.low)}"
        if self.high is not None and value > self.high:
            return f"must be <= {_num(self.high)}"
        return None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


COUNT = Range(1, integer=True)            # how many of something: at least one
STEPS = Range(0, integer=True)            # steps, intervals, workers: zero allowed
POSITIVE = Range(0, open_low=True)        # rates, scales, sizes: strictly above zero
NONNEGATIVE = Range(0)                    # weights, strengths, shifts
FRACTION = Range(0, 1)                    # shares of a whole
SEED = Range(0, integer=True)

# Group by group; the first matching pattern wins. Keys absent from a command's config are skipped.
RANGES: dict[str, Range] = {
    # schedule / optimisation of generate
    "schedule.baseline_steps": STEPS,
    "schedule.prototype_steps": STEPS,
    "optimizer.lr": Range(0, open_low=True, why="a learning rate such as 0.05"),
    "optimizer.weight_decay": NONNEGATIVE,
    "optimizer.momentum": FRACTION,
    # regularizer: weights and their settings
    "regularizer.*.weight": Range(0, why="a weight of 0 turns the term off"),
    "regularizer.*.p": POSITIVE,
    "regularizer.*.unit": POSITIVE,
    # param_ops: edits of the image on a schedule (blur)
    "param_ops.*.sigma": NONNEGATIVE,
    "param_ops.*.every": STEPS,
    "param_ops.*.start": STEPS,
    "param_ops.*.stop": STEPS,
    "objective.balance": NONNEGATIVE,
    # transform (random affine per row)
    "transform.translate": FRACTION,
    "transform.jitter": NONNEGATIVE,
    "transform.pad": STEPS,
    "transform.pad_fraction": FRACTION,
    "transform.degrees": Range(0, 180),
    "transform.scale.*": POSITIVE,
    "transform.pad_value": FRACTION,
    # param (image parameterisation)
    "param.init_std": NONNEGATIVE,
    "param.decay": NONNEGATIVE,
    "param.std": POSITIVE,
    # progress and saving
    "progress.every_n_steps": COUNT,
    "checkpoint_every": STEPS,
    "checkpoint_minutes": NONNEGATIVE,
    # speed
    "speed.rows_per_chunk": COUNT,
    "speed.memory_fraction": Range(0, 1, open_low=True),
    # reference (natural images)
    "reference.max_per_class": COUNT,
    "reference.crops_per_photo": COUNT,
    "reference.batch_size": COUNT,
    "reference.num_workers": STEPS,
    "reference.part_fraction": Range(0, 1, open_low=True),
    "reference.scale.*": Range(0, 1, open_low=True),
    "reference.ratio.*": POSITIVE,
    "reference.seed": SEED,
    "reference.part_seed": SEED,
    # model
    "model.input_size": COUNT,
    "model.channels": COUNT,
    "model.num_classes": COUNT,
    "model.std.*": POSITIVE,
    "model.arch.num_classes": COUNT,
    "model.arch.width": COUNT,
    "model.arch.in_channels": COUNT,
    "model_a.input_size": COUNT,
    "model_b.input_size": COUNT,
    # trainer
    "trainer.log_every_n_steps": COUNT,
    "trainer.num_nodes": COUNT,
    "trainer.max_steps": Range(-1, integer=True),
    # generate / lucent top level
    "seeds_per_class": COUNT,
    "seed": SEED,
    "steps": COUNT,
    "lr": Range(0, open_low=True, why="a learning rate such as 0.003"),
    # train
    "epochs": COUNT,
    "batch_size": COUNT,
    "num_workers": STEPS,
    "weight_decay": NONNEGATIVE,
    "augment.max_shift": STEPS,
    "train_data.val_size": STEPS,
    "train_data.val_fraction": Range(0, 1),
    "train_data.limit_train_samples": COUNT,
    "train_data.limit_eval_samples": COUNT,
    "shortcut.share": FRACTION,
    "shortcut.mark.height": STEPS,  # 0: the whole image (stripes); the mark checks it fits
    "shortcut.mark.width": STEPS,
    "shortcut.mark.margin": STEPS,
    "shortcut.mark.alpha": FRACTION,
    # compare
    "weights.*": NONNEGATIVE,
    "detect.shift": STEPS,
    "detect.baseline_steps": STEPS,
    "mark.height": STEPS,  # 0: the whole image (stripes)
    "mark.width": STEPS,
    "mark.margin": STEPS,
    "mark.alpha": FRACTION,
    # report
    "max_grid_rows": COUNT,
}


def _numbers(node: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(dotted key, value) of every plain number under ``node`` (interpolations and ``???`` skipped)."""
    if isinstance(node, DictConfig):
        keys: Any = node.keys()
    elif isinstance(node, ListConfig):
        keys = range(len(node))
    else:
        return
    for key in keys:
        path = f"{prefix}.{key}" if prefix else str(key)
        if path.startswith("hydra") or OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)):
            yield from _numbers(child, path)
            continue
        value = child._value()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield path, value


def range_of(key: str) -> Range | None:
    """The rule for a dotted key (the first pattern of :data:`RANGES` that matches it)."""
    for pattern, rule in RANGES.items():
        if pattern.count(".") == key.count(".") and fnmatch.fnmatchcase(key, pattern):
            return rule
    return None


def _image_size_problem(cfg: DictConfig, value: float) -> str | None:
    model = cfg.get("model") if isinstance(cfg.get("model"), DictConfig) else None
    minimum = MIN_IMAGE_SIZE
    if model is not None:
        minimum = int(OmegaConf.select(model, "min_input_size", default=None) or MIN_IMAGE_SIZE)
    if value < minimum or not float(value).is_integer():
        own = OmegaConf.select(model, "input_size", default=None) if model is not None else None
        return (f"must be a whole number >= {minimum} (the model's minimum); use image_size=null for the model's "
                f"input size" + (f" ({own})" if own else ""))
    return None


def check_ranges(cfg: DictConfig) -> None:
    """Raise a ConfigError for the first numeric setting of ``cfg`` outside its range (see the module doc)."""
    for key, value in _numbers(cfg):
        if key == "image_size":
            problem = _image_size_problem(cfg, value)
            rule = None
        else:
            rule = range_of(key)
            problem = rule.problem(value) if rule is not None else None
        if problem:
            why = f" ({rule.why})" if rule is not None and rule.why else ""
            raise ConfigError(f"{key}={value}: {problem}{why}; set {key}=<value> in range")
