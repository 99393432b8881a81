"""Settings for how fast the optimisation runs (the ``speed`` config group); no heavy imports, so the
command line can check them before start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError


@dataclass
class SpeedSettings:
    """How the optimisation runs, never what it computes (results agree within floating-point tolerance).

    Attributes:
        rows_per_chunk: rows one process optimises at once; more rows are done in further chunks, each
            for the whole schedule. ``None``: all at once; ``"auto"``: as many as fit in
            ``memory_fraction`` of the device's free memory, from a measured per-row cost.
        channels_last: feed the network channels-last tensors (``"auto"``: on CUDA and CPUs).
        compile: ``torch.compile`` the step (parameterisation, transforms, network, losses).
        fold_batchnorm: optimise through a copy of the frozen network whose batch norms are folded into
            the convolutions before them (not when a loss term records activations).
        memory_fraction: share of free device memory that ``rows_per_chunk="auto"`` plans to use.
        batch_invariant: run the network on one row per call (forward and backward), so that a row's
            arithmetic does not depend on which rows share its batch: chunked, sharded and whole runs then
            give bit-identical prototypes on a CPU, at the cost of batching (see the README's Speed section).
    """

    rows_per_chunk: int | str | None = None
    channels_last: bool | str = "auto"
    compile: bool = False
    fold_batchnorm: bool = True
    memory_fraction: float = 0.75
    batch_invariant: bool = False

    def __post_init__(self) -> None:
        rpc = self.rows_per_chunk
        if isinstance(rpc, str) and rpc.lower() in ("null", "none", "all", ""):
            rpc = None
        if rpc is not None and rpc != "auto":
            try:
                rpc = int(rpc)
            except (TypeError, ValueError):
                rpc = 0
            if rpc < 1:
                raise ConfigError(f"speed.rows_per_chunk={self.rows_per_chunk}: use a positive number of rows, "
                                  "auto (from the measured memory per row) or null (all rows at once)")
        self.rows_per_chunk = rpc
        if self.channels_last not in (True, False, "auto"):
            raise ConfigError(f"speed.channels_last={self.channels_last}: use true, false or auto")
        if not 0.05 <= float(self.memory_fraction) <= 1.0:
            raise ConfigError(f"speed.memory_fraction={self.memory_fraction}: use a fraction in [0.05, 1]")
        if self.batch_invariant not in (True, False):
            raise ConfigError(f"speed.batch_invariant={self.batch_invariant}: use true or false")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "SpeedSettings":
        cfg = dict(cfg or {})
        known = ("rows_per_chunk", "channels_last", "compile", "fold_batchnorm", "memory_fraction", "batch_invariant")
        unknown = sorted(set(cfg) - set(known))
        if unknown:
            raise ConfigError(f"unknown speed settings {unknown}: use {', '.join(known)}")
        return cls(**cfg)
