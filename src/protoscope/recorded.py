"""Run records for every command: ``recorded(task, recipe)`` wraps a command's Hydra task so that its
output folder gets a ``run.json`` (:class:`protoscope.records.RunRecord`) from start to end, and a folder
that already holds the completed run is skipped when made with the same recipe (one log line) and
refused when not (a ConfigError naming the differing keys). ``protoscope-generate`` records its runs in
its pipeline (it also resumes a saved state); ``protoscope-lucent``, ``-evaluate``, ``-train`` and
``-compare`` use this wrapper, so scripts that chain them resume from the records alone.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig

from .errors import ConfigError, RunInterrupted
from .records import RunRecord, check_same_recipe, is_rank_zero, one_line

Task = Callable[[DictConfig], Any]


def output_folder(cfg: DictConfig) -> Path:
    """The folder a command writes (``paths.output_dir``, its Hydra run folder)."""
    return Path(str(cfg.paths.output_dir))


def recorded(task: str, recipe: Callable[[DictConfig], Mapping[str, Any]],
             folder: Callable[[DictConfig], Path] = output_folder) -> Callable[[Task], Task]:
    """Wrap ``run(cfg)`` (a command's task) with its run record in ``folder(cfg)``.

    ``recipe(cfg)`` is the resolved config subset that decides the outputs (it may pin models first). A
    number the task returns (a sweep's value) is kept in the record as ``value`` and returned on a skip.
    """

    def wrap(run: Task) -> Task:
        @functools.wraps(run)
        def wrapper(cfg: DictConfig) -> Any:
            out_dir = folder(cfg)
            record = RunRecord(out_dir, task, enabled=is_rank_zero())
            wanted = dict(recipe(cfg))
            if record.status == "completed":
                check_same_recipe(out_dir, record, wanted)
                return record.data.get("value")
            if is_rank_zero() and record.held_by_other_process():
                raise ConfigError(f"{out_dir} is in use by process {record.data['pid']} on this machine; "
                                  "wait for it or choose another folder")
            record.start(cfg, wanted)
            try:
                result = run(cfg)
            except RunInterrupted as exc:
                record.end("interrupted", one_line(exc))
                raise
            except Exception as exc:
                record.end("failed", one_line(exc))
                raise
            except BaseException as exc:  # a signal, Ctrl-C, exit: stopped, not failed
                record.end("interrupted", one_line(exc) or type(exc).__name__)
                raise
            value = result if isinstance(result, (int, float)) and not isinstance(result, bool) else None
            record.end("completed", value=value)
            return result

        return wrapper

    return wrap
