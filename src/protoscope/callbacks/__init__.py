"""Lightning callbacks of a generation run: progress reports and resumable, signal-safe state."""

from .progress import ProgressReporter
from .state import StateCheckpoint

__all__ = ["ProgressReporter", "StateCheckpoint"]
