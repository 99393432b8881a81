"""A Lightning DDP strategy for modules whose processes own disjoint rows: no gradient communication.

Prototype rows are independent, so each rank creates, optimises and saves only its own rows
(:class:`~protoscope.generation.module.PrototypeModule` says so with ``rows_owned_per_rank = True``). For such a
module this strategy does not wrap it in ``DistributedDataParallel`` (there is nothing to all-reduce) and
every rank writes its own checkpoint file, atomically: Lightning hands all ranks the path rank 0 chose,
and :func:`~protoscope.generation.sharding.rank_file` maps it to ``<stem>.rank<k>-of-<W><suffix>``. Loading maps
the same way and refuses a state saved by another number of processes. Any other module (e.g.
``protoscope-train``'s classifier) gets Lightning's ordinary DDP behaviour.

Configured by ``conf/trainer/ddp.yaml`` (``start_method: popen``, one process per device started by
re-running the command, or SLURM tasks) and ``conf/trainer/ddp_spawn.yaml`` (``start_method: spawn``).
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.strategies import DDPStrategy

from ..errors import CheckpointError, ConfigError
from ..io import write_torch
from .sharding import check_world_size, rank_file

log = logging.getLogger("protoscope")


def require_own_rows(strategy: Any, world_size: int) -> None:
    """Several processes need the RowShardedStrategy (any other would copy every row to every process)."""
    if world_size > 1 and not getattr(strategy, "writes_checkpoints_atomically", False):
        raise ConfigError(f"trainer.strategy={type(strategy).__name__} would copy every row to every process: "
                          "use trainer=ddp or trainer=ddp_spawn (protoscope's RowShardedStrategy: each process "
                          "owns its rows)")


class RowShardedStrategy(DDPStrategy):
    """DDP without the DDP wrapper for row-owning modules; per-rank, atomic checkpoint files."""

    #: StateCheckpoint may hand the final path: every file is written beside it and renamed into place.
    writes_checkpoints_atomically = True

    def setup_distributed(self) -> None:
        super().setup_distributed()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            atexit.register(_destroy_process_group)

    def _owns_rows(self) -> bool:
        module = self.lightning_module
        return bool(getattr(module, "rows_owned_per_rank", False))

    def configure_ddp(self) -> None:
        if self._owns_rows():
            log.debug("%s: rows are owned per rank; no DistributedDataParallel wrapper", type(self).__name__)
            return  # self.model stays the LightningModule: no gradient hooks, no all-reduce
        super().configure_ddp()

    def _rank_path(self, filepath: _PATH) -> Path:
        return rank_file(filepath, self.global_rank, self.world_size)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any = None) -> None:
        if not self._owns_rows():
            if self.is_global_zero:
                write_torch(filepath, checkpoint)
            return
        write_torch(self._rank_path(filepath), checkpoint)

    def load_checkpoint(self, checkpoint_path: _PATH, weights_only: bool | None = None) -> dict[str, Any]:
        if not self._owns_rows():
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        check_world_size(checkpoint_path, self.world_size)  # a clear error for another process count
        path = self._rank_path(checkpoint_path)
        if not path.is_file():
            raise CheckpointError(f"no saved state {path} for rank {self.global_rank} of {self.world_size}")
        return torch.load(path, map_location="cpu", weights_only=True if weights_only is None else weights_only)

    def remove_checkpoint(self, filepath: _PATH) -> None:
        if not self._owns_rows():
            super().remove_checkpoint(filepath)
            return
        self._rank_path(filepath).unlink(missing_ok=True)


def _destroy_process_group() -> None:
    """Destroy the process group at exit, for every backend. Lightning does so for NCCL only; a gloo process
    that exits with its group alive can abort while the interpreter shuts down ("terminate called without
    an active exception": Gloo's worker threads outlive it, pytorch/pytorch#190489)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
