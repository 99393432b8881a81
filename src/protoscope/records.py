"""Run records: ``run.json`` beside a run's outputs, the one file a report reads to trust a run.

A record holds the run's status (``running``, ``completed``, ``failed``, ``interrupted``), the error's
one line, the Hydra overrides and job (name, number, sweep folder), the base ``seed``, ``tag``, the
recipe (the config keys that decide the prototypes), the model (name, weights file, training-recipe
hash), the code version, the device, wall seconds of
every attempt and, once complete, summary metrics. It is rewritten atomically at every change.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .io import write_json
from .paths import REPO_DIR

log = logging.getLogger("protoscope")

RECORD_FILE = "run.json"
STATUSES = ("running", "completed", "failed", "interrupted")
# The config keys that decide which prototypes a run makes (what a resume or a skip must match).
RECIPE_KEYS = ("model", "classes", "seeds_per_class", "seed", "image_size", "param", "transform",
               "regularizer", "param_ops", "objective", "schedule", "optimizer")
# Recipe keys recorded only when set (so that runs recorded before they existed still resume and skip).
OPTIONAL_RECIPE_KEYS = ("targets",)


def recipe_of(cfg: DictConfig, keys: Sequence[str] = RECIPE_KEYS,
              optional: Sequence[str] = OPTIONAL_RECIPE_KEYS) -> dict[str, Any]:
    """The resolved config subset ``keys`` and the ``optional`` keys that are set (by default: what decides
    the prototypes: model, rows, recipe)."""
    out = {}
    for key in (*keys, *optional):
        value = cfg.get(key)
        if key in optional and value is None:
            continue
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for k, v in value.items():
            flat.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return flat or {prefix: {}}
    return {prefix: value}


def recipe_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every leaf that differs between two recipes."""
    a, b = _flatten(old), _flatten(new)
    missing = object()
    return [f"{k}: {a.get(k, '<unset>')!s} -> {b.get(k, '<unset>')!s}"
            for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


def check_same_recipe(out_dir: str | Path, record: "RunRecord", recipe: Mapping[str, Any]) -> None:
    """A folder's completed run may be skipped only when it was made with ``recipe``: else a ConfigError
    naming the differing keys."""
    diff = recipe_differences(record.data.get("recipe") or {}, recipe)
    if diff:
        raise ConfigError(f"{out_dir} holds a completed run with another config "
                          f"({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); choose another folder "
                          "(hydra.run.dir / hydra.sweep.dir) or delete its run.json to run it again")
    log.info("%s already holds this completed run: skipped (delete its run.json to run it again)", out_dir)


def git_version() -> dict[str, Any] | None:
    """The commit of the protoscope checkout (and whether it has local changes), or None."""
    if not (REPO_DIR / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)} if commit else None


def hydra_job() -> dict[str, Any]:
    """The Hydra job of this run (name, number, overrides, sweep folder); empty outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return {"overrides": [], "multirun": False}
    multirun = hc.mode == RunMode.MULTIRUN
    return {
        "swept": swept_keys(hc) if multirun else [],
        "name": hc.job.name,
        "num": int(hc.job.num) if multirun and hc.job.get("num") is not None else None,
        "id": str(hc.job.get("id")) if multirun else None,
        "overrides": list(hc.overrides.task),
        "override_dirname": hc.job.override_dirname,
        "multirun": multirun,
        "sweep_dir": str(Path(hc.sweep.dir).resolve()) if multirun else None,
    }


def is_rank_zero() -> bool:
    """Whether this process is global rank zero (also in processes that torchrun/SLURM/Lightning started)."""
    from lightning_fabric.utilities.rank_zero import _get_rank

    return (_get_rank() or 0) == 0


def swept_keys(hc: Any) -> list[str]:
    """The keys a multirun varies: its sweeper's ``params`` and the command line's sweep overrides
    (read from the ``multirun.yaml`` Hydra writes in the sweep folder before the jobs start)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [str(k) for k in (hc.sweeper.get("params") or {})]
    saved = Path(hc.sweep.dir) / "multirun.yaml"
    if saved.is_file():
        try:
            task = OmegaConf.load(saved).hydra.overrides.task
            keys += [o.key_or_group for o in OverridesParser.create().parse_overrides(list(task))
                     if o.is_sweep_override()]
        except Exception:  # noqa: BLE001 - names are a convenience; never fail a job over them
            pass
    return list(dict.fromkeys(k.lstrip("+~") for k in keys))


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``run.json`` of a folder, or None when absent or unreadable."""
    path = Path(run_dir) / RECORD_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunRecord:
    """The ``run.json`` of one run folder, written atomically on every change."""

    def __init__(self, run_dir: str | Path, task: str, enabled: bool = True) -> None:
        self.path = Path(run_dir) / RECORD_FILE
        self.task, self.enabled = task, enabled
        self.data: dict[str, Any] = read_record(run_dir) or {}
        self._attempt_start = time.perf_counter()

    @property
    def status(self) -> str | None:
        return self.data.get("status")

    def held_by_other_process(self) -> bool:
        """True when another live process on this host is writing this run folder."""
        d = self.data
        return (d.get("status") == "running" and d.get("host") == socket.gethostname()
                and isinstance(d.get("pid"), int) and d["pid"] != os.getpid() and pid_alive(d["pid"]))

    def start(self, cfg: DictConfig, recipe: Mapping[str, Any]) -> None:
        """Mark the run ``running`` (a new attempt when the folder held an earlier one)."""
        job = hydra_job()
        attempts = list(self.data.get("attempts", []))
        for earlier in attempts:  # an attempt that never recorded its end was killed (SIGKILL, node loss)
            earlier.setdefault("status", "killed")
            earlier.setdefault("step", self.data.get("step", 0))
        attempts.append({"started": now(), "host": socket.gethostname(), "pid": os.getpid()})
        self.data = {
            "status": "running",
            "error": None,
            "task": self.task,
            "tag": cfg.get("tag"),
            "study": cfg.get("study_name"),
            "seed": cfg.get("seed"),
            "seeds_per_class": cfg.get("seeds_per_class"),
            "overrides": job.pop("overrides"),
            "job": job,
            "recipe": dict(recipe),
            "model": _model_entry(cfg),
            "code": {"git": git_version(), "protoscope": _version()},
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": None,
            "step": self.data.get("step", 0),
            "total_steps": None,
            "wall_seconds": float(self.data.get("wall_seconds", 0.0)),
            "attempts": attempts,
            "started": attempts[0]["started"],
            "ended": None,
            "metrics": {},
        }
        self._attempt_start = time.perf_counter()
        self.write()

    def saved_step(self, step: int) -> None:
        """Note the step whose optimisation state was just saved."""
        self.update(step=int(step))

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def end(self, status: str, error: str | None = None, **fields: Any) -> None:
        """Close this attempt with ``status`` (and the error's one line)."""
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        spent = time.perf_counter() - self._attempt_start
        attempts = self.data.setdefault("attempts", [{}])
        attempts[-1].update({"ended": now(), "status": status, "seconds": round(spent, 3)})
        self.data.update(status=status, error=error, ended=now(),
                         wall_seconds=round(float(self.data.get("wall_seconds", 0.0)) + spent, 3), **fields)
        self.write()

    def write(self) -> None:
        if self.enabled:  # one writer: global rank zero
            write_json(self.path, self.data)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: the error as a record and a report show it."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _model_entry(cfg: DictConfig) -> dict[str, Any] | None:
    """The model's name, weights file and training-recipe hash (protoscope.models.store)."""
    from .models.store import model_entry

    return model_entry(cfg.get("model"))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("protoscope")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"
