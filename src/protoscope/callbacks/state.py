"""The run's optimisation state on disk: every N steps, every N minutes, and on SIGINT/SIGTERM.

A signal does not stop the step it arrives in: it is noted, the step finishes, the state after that
step is saved, and :class:`~protoscope.errors.RunInterrupted` ends the run before the next step (a
signal during the last step lets the run complete). Starting the run again in
the same folder continues from the saved step with results equal to an uninterrupted run. A second
Ctrl-C while saving stops at once (Python's default handler is back by then).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl

from ..errors import RunInterrupted

log = logging.getLogger("protoscope")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StateCheckpoint(pl.Callback):
    """Saves ``path`` atomically; ``on_saved(step)`` is called after each save (on global rank zero).

    Under several processes the decision to save on time or on a signal is made together at the
    logging interval (``sync_every`` steps), so every rank saves at the same step.
    """

    def __init__(self, path: str | Path, every_n_steps: int = 0, every_minutes: float = 0.0,
                 on_saved: Callable[[int], None] | None = None, sync_every: int = 25) -> None:
        self.path = Path(path)
        self.every_n_steps, self.every_seconds = int(every_n_steps), float(every_minutes) * 60.0
        self.on_saved, self.sync_every = on_saved, max(1, int(sync_every))
        self.received: int | None = None
        self._stop = self._flush = False
        self._previous: dict[int, Any] = {}
        self._last_save = time.monotonic()

    # --- signals ---------------------------------------------------------------------------
    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum
        signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
        log.warning("received %s: saving the state after this step, then stopping (press Ctrl-C again to "
                    "stop at once)", signal.Signals(signum).name)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    # --- hooks -----------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from ..startup import raise_if_signalled

        raise_if_signalled()  # a signal during the trainer's set-up that a library swallowed still stops the run
        self._last_save = time.monotonic()
        self._install()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        stop = self.received is not None
        timed = self.every_seconds > 0 and time.monotonic() - self._last_save >= self.every_seconds
        if trainer.world_size > 1:
            if step % self.sync_every:
                stop = timed = False
            else:
                stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
                timed = trainer.strategy.reduce_boolean_decision(timed, all=False)
        on_step = self.every_n_steps > 0 and step % self.every_n_steps == 0
        if stop or timed or on_step:
            self.save(trainer)
        self._stop = stop

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # Lightning hands the last step's logged values to the loggers after on_train_batch_end: flush
        # them here, so the metric history on disk reaches the saved step, then stop if asked to.
        if self._flush:
            self._flush_loggers(trainer)
        if self._stop:
            raise RunInterrupted(self.received or signal.SIGTERM, trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    # --- saving ----------------------------------------------------------------------------
    def save(self, trainer: pl.Trainer) -> None:
        """Write the checkpoint beside ``path`` and rename it into place (never a half-written file)."""
        if getattr(trainer.strategy, "writes_checkpoints_atomically", False):  # one file per rank, each atomic
            trainer.save_checkpoint(self.path, weights_only=False)
        else:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            trainer.save_checkpoint(tmp, weights_only=False)
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
        if trainer.is_global_zero:
            self._flush_loggers(trainer)
            if self.on_saved is not None:
                self.on_saved(trainer.global_step)
        self._flush = True
        self._last_save = time.monotonic()

    def _flush_loggers(self, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:  # metric rows up to the saved step reach the disk with the state
                logger.save()
        self._flush = False
