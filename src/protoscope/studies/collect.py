"""A study: the runs of one or more sweeps, which keys they sweep, and their values per run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import OmegaConf

from ..errors import ConfigError
from ..records import pid_alive
from .runs import RunInfo, find_run_dirs, load_run

UNSET = "(default)"
# Metrics shown in tables and plots when present, in this order (all metrics go into the CSV files).
# The metrics a report shows first (target_activation: runs of feature targets, which have no class).
DEFAULT_METRICS = ("target_prob", "top1", "target_activation", "spearman/mean", "spearman/percentile", "l1/mean",
                   "l1/percentile")


def lower_is_better(metric: str) -> bool:
    """Distances (L1) are better when lower; scores, probabilities and percentiles when higher."""
    head, _, tail = metric.partition("/")
    return head == "l1" and "percentile" not in tail


def _is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def sort_values(values: Iterable[str]) -> list[str]:
    """Numbers in numeric order, anything else in first-seen order."""
    values = list(dict.fromkeys(values))
    if values and all(_is_number(v) for v in values):
        return sorted(values, key=float)
    return values


def _config_value(run: RunInfo, key: str) -> str:
    """The value of ``key`` in the run's saved config.yaml when it was not overridden (scalars only)."""
    path = run.dir / "config.yaml"
    if not path.is_file():
        return UNSET
    value = OmegaConf.select(OmegaConf.load(path), key, default=None, throw_on_resolution_failure=False)
    return UNSET if value is None or OmegaConf.is_config(value) else str(value)


@dataclass
class Study:
    """Runs with their swept keys; ``value(run, key)`` is the run's setting of ``key``."""

    roots: list[Path]
    runs: list[RunInfo]
    swept: list[str]
    seed_keys: list[str]
    fixed: dict[str, str]
    values: dict[tuple[int, str], str] = field(default_factory=dict)

    @property
    def setting_keys(self) -> list[str]:
        """Swept keys that define a setting (the seed keys excluded)."""
        return [k for k in self.swept if k not in self.seed_keys]

    def value(self, run: RunInfo, key: str) -> str:
        return self.values[(id(run), key)]

    def setting(self, run: RunInfo) -> tuple[str, ...]:
        return tuple(self.value(run, k) for k in self.setting_keys)

    def settings(self) -> list[tuple[str, ...]]:
        """Every setting, ordered by each key's sorted values."""
        orders = [sort_values(self.value(r, k) for r in self.runs) for k in self.setting_keys]
        found = {self.setting(r) for r in self.runs}
        return sorted(found, key=lambda s: [orders[i].index(v) for i, v in enumerate(s)])

    def runs_of(self, setting: tuple[str, ...], status: str | None = "completed") -> list[RunInfo]:
        return [r for r in self.runs if self.setting(r) == setting and (status is None or r.status == status)]

    def metrics(self) -> list[str]:
        """Every metric of a completed run, the usual ones first."""
        seen = list(dict.fromkeys(m for r in self.runs for m in r.metrics))
        return [m for m in DEFAULT_METRICS if m in seen] + [m for m in seen if m not in DEFAULT_METRICS]

    def label(self, setting: Sequence[str]) -> str:
        return ", ".join(f"{k}={v}" for k, v in zip(self.setting_keys, setting)) or "all runs"

    def sweep_name(self) -> str:
        """``<study>/<sweep folder>``: the group of the sweep's W&B runs."""
        studies = {r.record.get("study") for r in self.runs if r.record.get("study")}
        return f"{studies.pop() if len(studies) == 1 else 'sweep'}/{self.roots[0].name}"


def mark_dead_runs(runs: Iterable[RunInfo]) -> None:
    """A ``running`` record whose process is gone on this host was killed: say so."""
    import socket

    host = socket.gethostname()
    for run in runs:
        pid = run.record.get("pid")
        if run.status == "running" and run.record.get("host") == host and isinstance(pid, int) and not pid_alive(pid):
            run.status = "killed"
            run.record["error"] = (f"the process ended at step {run.record.get('step', 0)} without recording an end "
                                   "(killed?); launch the sweep again with the same hydra.sweep.dir to resume it")


def collect(roots: Sequence[str | Path], seed_keys: Sequence[str] = ("seed",)) -> Study:
    """Read every run under ``roots`` (multirun folders, study folders or run folders)."""
    roots = [Path(r).expanduser() for r in roots]
    for root in roots:
        if not root.is_dir():
            raise ConfigError(f"sweep_dir={root} is not a folder: give a multirun folder (outputs/generate/multirun/"
                              "<time>) or run folders")
    dirs = [d for root in roots for d in find_run_dirs(root)]
    if not dirs:
        raise ConfigError(f"no runs under {', '.join(map(str, roots))}: a run folder holds run.json (or metrics.json)")
    runs = [load_run(d) for d in dirs]
    mark_dead_runs(runs)
    keys = list(dict.fromkeys(k for r in runs for k in r.overrides if not k.startswith("hydra")))
    values = {(id(r), k): r.overrides[k] if k in r.overrides else _config_value(r, k) for r in runs for k in keys}
    swept = [k for k in keys if len({values[(id(r), k)] for r in runs}) > 1]
    fixed = {k: values[(id(runs[0]), k)] for k in keys if k not in swept}
    return Study(roots, runs, swept, [k for k in swept if k in seed_keys], fixed, values)
