"""OmegaConf resolvers protoscope's configs use (registered when an entry point is imported)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import ListConfig, OmegaConf


def task_dir(out_dir: Any, inputs: Any, sub: str, default: str) -> str:
    """Where a task that reads other runs writes: ``out_dir`` if set, else ``<first input>/<sub>``, else
    ``default``. So ``protoscope-evaluate run_dir=R`` writes (and logs) into ``R/evaluation`` and leaves
    no empty folder under outputs/."""
    if out_dir:
        return str(out_dir)
    if isinstance(inputs, (list, tuple, ListConfig)):
        inputs = inputs[0] if len(inputs) else None
    return str(Path(str(inputs)) / sub) if inputs else str(default)


# The config groups each task uses, as its --help lists them.
TASK_GROUPS = {
    "generate": ("model", "param", "transform", "regularizer", "param_ops", "objective", "schedule", "optimizer", "reference",
                 "trainer", "speed", "logger", "experiment", "recipe", "study"),
    "evaluate": ("model", "reference", "logger"),
    "train": ("model", "train_data", "trainer", "logger"),
    "report": ("logger", "template"),
    "audit": ("model", "mark", "reference", "logger"),
    "compare": ("model", "mark", "param", "transform", "regularizer", "param_ops", "objective", "schedule", "optimizer",
                "reference", "trainer", "logger", "experiment"),
}


def group_choices(group: str) -> list[str] | None:
    """The options of config group ``group`` (``conf/<group>/*.yaml``), or None if it is no group."""
    from .paths import conf_dir

    folder = conf_dir() / group
    if not folder.is_dir():
        return None
    return sorted(p.stem for p in folder.glob("*.yaml"))


def help_groups(task: str) -> str:
    """``group: option, option`` lines of the groups ``task`` uses (for its ``--help``)."""
    lines = []
    for group in TASK_GROUPS[task]:
        options = group_choices(group) or []
        name = "+study (a sweep: -m +study=<name>)" if group == "study" else group
        lines.append(f"{name}: {', '.join(options)}")
    if task == "generate":
        lines.append("hydra/launcher: basic (default), joblib, slurm, submitit_local, submitit_slurm")
        lines.append("hydra/sweeper: basic (default), optuna (pip install -e '.[optuna]')")
    return "\n".join(lines)


def register() -> None:
    if not OmegaConf.has_resolver("protoscope.task_dir"):
        OmegaConf.register_new_resolver("protoscope.task_dir", task_dir)
    if not OmegaConf.has_resolver("protoscope.help_groups"):
        OmegaConf.register_new_resolver("protoscope.help_groups", help_groups)
    if not OmegaConf.has_resolver("protoscope.slurm_gpus"):  # conf/hydra/launcher/slurm.yaml
        from .slurm_resources import gpus_per_node, tasks_per_node

        OmegaConf.register_new_resolver("protoscope.slurm_gpus", gpus_per_node)
        OmegaConf.register_new_resolver("protoscope.slurm_tasks", tasks_per_node)


register()
