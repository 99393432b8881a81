"""Experiment loggers: a CSV logger that resumes, and W&B run names and groups for sweeps."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any, Mapping

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    """Keeps an earlier attempt's ``metrics.csv``: rows before the first newly logged step stay,
    rows from that step on (logged after the checkpoint a run resumed from) are replaced."""

    def _check_log_dir_exists(self) -> None:  # the base class deletes metrics.csv here
        self._trim_at: bool = os.path.isfile(self.metrics_file_path)
        if self._trim_at:
            with open(self.metrics_file_path, newline="") as fh:
                reader = csv.DictReader(fh)
                self.metrics_keys = list(reader.fieldnames or [])

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if getattr(self, "_trim_at", False) and step is not None:
            self._trim_at = False
            with open(self.metrics_file_path, newline="") as fh:
                kept = [r for r in csv.DictReader(fh) if r.get("step") not in (None, "") and int(r["step"]) < step]
            with open(self.metrics_file_path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
        super().log_metrics(metrics_dict, step)


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSV logger, except that a resumed run appends to the metric history it had."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


# Overrides that say where or how a job runs, not what it computes: left out of W&B run names.
_PLUMBING = re.compile(r"^\+*(hydra[./]|logger|paths\.|progress|checkpoint_|study|trainer\.enable_progress_bar)")


def _short(value: str, width: int) -> str:
    value = re.sub(r"\s+", "", value)
    return value if len(value) <= width else value[: width - 1] + "…"


def naming_overrides(overrides: list[str]) -> list[str]:
    """The overrides that describe what a job computes (plumbing such as logger= left out)."""
    return [o for o in overrides if not _PLUMBING.match(o)]


def wandb_run_settings(job: Mapping[str, Any], tag: str | None, study: str | None) -> dict[str, Any]:
    """Group, name and tags of one job's W&B run.

    Multirun jobs: group = the study (or ``sweep``) and the sweep folder's name, so a sweep's jobs sit
    together; name = the job's swept values (``optimizer.lr=0.01,seed=1``, else its overrides) and its
    number; tags = ``tag`` and each of those values. Single runs: tagged with ``tag``.
    """
    tags = [t for t in [tag] if t]
    overrides = naming_overrides(list(job.get("overrides") or []))
    swept = set(job.get("swept") or [])
    if swept:  # name a job by what its sweep varies
        overrides = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept] or overrides
    if not job.get("multirun"):
        return {"tags": tags}
    sweep = Path(str(job.get("sweep_dir") or "sweep")).name
    name = ",".join(_short(o, 40) for o in overrides) or "job"
    return {"group": f"{study or 'sweep'}/{sweep}", "name": f"{name} #{job.get('num')}",
            "tags": tags + [_short(o, 64) for o in overrides]}
