"""Errors protoscope raises for bad input: each names the problem and the fix."""


class ProtoscopeError(Exception):
    """Base class of every error raised for bad user input or a failed run."""


class ConfigError(ProtoscopeError, ValueError):
    """A configuration value is invalid (unknown model, class, size, ...)."""


class CheckpointError(ProtoscopeError):
    """A checkpoint file is missing, unreadable or does not fit the architecture."""


class ReferenceDataError(ProtoscopeError):
    """Reference (natural image) data is missing, empty or does not fit the model."""


class EnvironmentMismatch(ProtoscopeError):
    """The installed libraries do not fit together (e.g. a torchvision built for another torch)."""


class DivergenceError(ProtoscopeError, FloatingPointError):
    """The optimisation produced a non-finite loss."""


class RunInterrupted(ProtoscopeError):
    """SIGINT or SIGTERM stopped a run after its state was saved; starting it again resumes it."""

    def __init__(self, signum: int, step: int, resume_hint: str = "") -> None:
        import signal

        self.signum, self.step = int(signum), int(step)
        name = signal.Signals(self.signum).name
        super().__init__(f"{name} at step {self.step}: the state is saved{resume_hint}")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum
