"""Parameter-space operations: edits of the parameterisation between optimiser steps, on a schedule.

Not loss terms: nothing here has a gradient. The step loop calls ``op(param, stage, step)`` after each
optimiser step, with ``stage`` ``"baseline"`` or ``"prototype"`` and ``step`` counted from 0 within
that stage; the op decides from its schedule (``stage``, ``every``, ``start``, ``stop``) whether to act.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import ImageParam

STAGES = ("baseline", "prototype", "all")


class ParamOp:
    """An edit of the parameterisation on a schedule: after step ``s`` (0-based) of ``stage`` (``all``:
    either stage, each counting its own steps) with ``start <= s`` and ``stop`` None or ``s < stop``,
    every ``every``-th step, i.e. when ``(s - start + 1) % every == 0``."""

    def __init__(self, every: int = 1, stage: str = "prototype", start: int = 0, stop: int | None = None) -> None:
        if stage not in STAGES:
            raise ConfigError(f"param_ops: stage={stage!r} is not a stage; choose one of {', '.join(STAGES)}")
        if int(every) < 0 or int(start) < 0 or (stop is not None and int(stop) < 0):
            raise ConfigError(f"param_ops: every, start and stop must be >= 0 (got {every}, {start}, {stop})")
        self.every, self.stage, self.start = int(every), stage, int(start)
        self.stop = None if stop is None else int(stop)

    def due(self, stage: str, step: int) -> bool:
        """Whether the op acts after step ``step`` of ``stage``."""
        if self.every <= 0 or self.stage not in (stage, "all") or step < self.start:
            return False
        if self.stop is not None and step >= self.stop:
            return False
        return (step - self.start + 1) % self.every == 0

    def apply(self, param: ImageParam) -> None:
        raise NotImplementedError

    def __call__(self, param: ImageParam, stage: str, step: int) -> None:
        if self.due(stage, step):
            self.apply(param)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class Blur(ParamOp):
    """Replace the image x in [0,1] (what the model sees before transforms) by its Gaussian blur
    (``sigma`` pixels, reflect padding) and set the parameterisation to represent the blurred image
    (removes adversarial noise). Default schedule: every 4th prototype step."""

    def __init__(self, sigma: float = 0.5, every: int = 4, stage: str = "prototype", start: int = 0,
                 stop: int | None = None) -> None:
        super().__init__(every, stage, start, stop)
        self.sigma = float(sigma)
        if self.sigma < 0:
            raise ConfigError(f"param_ops.blur.sigma must be >= 0 (got {self.sigma}); 0 turns the blur off")

    def apply(self, param: ImageParam) -> None:
        if self.sigma > 0:
            param.blur_(self.sigma)
