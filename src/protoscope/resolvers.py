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


def register() -> None:
    if not OmegaConf.has_resolver("protoscope.task_dir"):
        OmegaConf.register_new_resolver("protoscope.task_dir", task_dir)


register()
