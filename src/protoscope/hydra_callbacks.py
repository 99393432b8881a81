"""Hydra callbacks: a sweep ends with one line on how its jobs ended and how to report on it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .records import read_record

log = logging.getLogger("protoscope")


class SweepSummary(Callback):
    """After a multirun: ``sweep <dir>: 7 completed, 2 failed (jobs 3, 5); report: protoscope-report ...``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        records = {p.name: r for p in sorted(sweep.iterdir()) if p.is_dir() and (r := read_record(p))} \
            if sweep.is_dir() else {}
        if not records:
            return
        counts: dict[str, list[str]] = {}
        for job, rec in records.items():
            counts.setdefault(str(rec.get("status")), []).append(job)
        parts = [f"{len(jobs)} {status}" + (f" (jobs {', '.join(jobs)})" if status != "completed" else "")
                 for status, jobs in sorted(counts.items())]
        log.info("sweep %s: %s; report: protoscope-report sweep_dir=%s", sweep, ", ".join(parts), sweep)
