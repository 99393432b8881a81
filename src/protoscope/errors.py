"""Errors protoscope raises for bad input: each names the problem and the fix."""


class ProtoscopeError(Exception):
    """Base class of every error raised for bad user input or a failed run."""


class ConfigError(ProtoscopeError, ValueError):
    """A configuration value is invalid (unknown model, class, size, ...)."""


class CheckpointError(ProtoscopeError):
    """A checkpoint file is missing, unreadable or does not fit the architecture."""


class ReferenceDataError(ProtoscopeError):
    """Reference (natural image) data is missing, empty or does not fit the model."""


class DivergenceError(ProtoscopeError, FloatingPointError):
    """The optimisation produced a non-finite loss."""
