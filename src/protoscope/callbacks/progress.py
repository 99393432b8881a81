"""Progress of the optimisation: a bar on a terminal, a log line every N steps off one (cluster logs)."""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger("protoscope")
MODES = ("auto", "bar", "log", "none")


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def resolve_mode(mode: str, bar_enabled: bool = True) -> str:
    """``auto`` -> a bar on a terminal, else log lines; with the bar switched off (``enable_progress_bar=false``)
    ``auto`` and ``bar`` become log lines, so a log file shows progress whatever the bar flag."""
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "log"
    if mode == "bar" and not bar_enabled:
        mode = "log"
    return mode


class ProgressReporter(pl.Callback):
    """Reports step k of the run's total (from the resumed step on, so the total is always real).

    ``mode``: ``bar`` (tqdm), ``log`` (one line every ``every_n_steps`` steps with rate and ETA, for
    files such as SLURM logs), ``auto`` (a bar on a terminal, else log lines) or ``none``. The loss
    shown is the one Lightning already holds from the last logging step, so reporting never waits
    for the device.
    """

    def __init__(self, total_steps: int | None = None, mode: str = "auto", every_n_steps: int = 50,
                 desc: str = "generate") -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
        self.total, self.mode, self.every = int(total_steps or 0), resolve_mode(mode), max(1, int(every_n_steps))
        self.desc = desc
        self._bar: Any = None
        self._start_step, self._t0 = 0, 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or self.mode == "none":
            return
        # all chunks of a generate run (known once rows are planned), else what Lightning will step through
        total = getattr(pl_module, "total_steps", None)
        self.total = int(total if total is not None else trainer.estimated_stepping_batches)
        self._start_step, self._t0 = trainer.global_step, time.perf_counter()
        if self.mode == "log":  # the line a log file shows when start-up ends
            from ..startup import seconds_since_start

            log.info("start-up done after %s: %s step %d of %d begins (a line every %d steps)", format_seconds(
                seconds_since_start()), self.desc, self._start_step + 1, self.total, self.every)
        if self._start_step:
            log.info("continuing at step %d of %d", self._start_step, self.total)
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self._start_step, desc=self.desc, unit="step",
                             dynamic_ncols=True, leave=True)

    def _loss(self, trainer: pl.Trainer) -> float | None:
        value = trainer.callback_metrics.get("loss/total")
        return None if value is None else float(value)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero or self.mode == "none":
            return
        step = trainer.global_step
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            if step % self.every == 0 and (loss := self._loss(trainer)) is not None:
                self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            return
        if step % self.every and step != self.total:
            return
        done = step - self._start_step
        elapsed = time.perf_counter() - self._t0
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        loss = self._loss(trainer)
        log.info("step %d/%d (%d%%) | %.2f steps/s | elapsed %s | ETA %s%s", step, self.total,
                 100 * step // max(1, self.total), rate, format_seconds(elapsed), format_seconds(eta),
                 "" if loss is None else f" | loss {loss:.4g}")

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()
