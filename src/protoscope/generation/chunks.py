"""Finished chunks of one process's rows: kept on disk (one file per chunk and rank) and gathered at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch

from ..errors import ConfigError
from ..io import write_torch
from .sharding import RowPlan, rank_file


def chunk_file(folder: Path, chunk: int, rank: int, world_size: int) -> Path:
    return rank_file(folder / f"chunk{chunk:05d}.pt", rank, world_size)


def save_chunk(folder: Path, chunk: int, rank: int, world_size: int, rows: list[int], images: torch.Tensor) -> None:
    write_torch(chunk_file(folder, chunk, rank, world_size), {"rows": list(rows), "images": images})


def load_chunk(folder: Path, chunk: int, rank: int, world_size: int, expected_rows: list[int]) -> torch.Tensor:
    """The images of a finished chunk, checked to hold the rows this run plans for it."""
    path = chunk_file(folder, chunk, rank, world_size)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"the finished chunk {path} of the saved state is missing or unreadable ({exc}); "
                          f"delete {folder.parent} to start this run from the beginning") from None
    if list(saved["rows"]) != list(expected_rows):
        raise ConfigError(f"{path} holds other rows than this run plans: delete {folder.parent}")
    return saved["images"]


def gather_rows(done: Mapping[int, torch.Tensor], plan: RowPlan, rank: int, world_size: int,
                shape: tuple[int, ...], device: torch.device,
                all_gather: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """Every row's final image on rank 0, in row order (``[R, *shape]`` fp32, CPU); None elsewhere.

    ``done[c]`` holds this rank's rows of chunk ``c``; one ``all_gather`` per chunk when several processes run."""
    rows_total = sum(len(plan.rows(c, r)) for c in range(plan.num_chunks) for r in range(world_size))
    out = torch.empty(rows_total, *shape) if rank == 0 else None
    for c in range(plan.num_chunks):
        local = done[c]
        if world_size == 1:
            out[plan.rows(c, 0)] = local
            continue
        buf = torch.zeros(plan.max_rows(c), *shape, device=device)
        buf[: len(local)] = local.to(device)
        gathered = all_gather(buf)  # [W, rows, *shape]
        if rank == 0:
            for r in range(world_size):
                rows = plan.rows(c, r)
                out[rows] = gathered[r, : len(rows)].cpu()
    return out


def check_saved_shard(shard: Mapping, plan: RowPlan, rank: int, world_size: int) -> None:
    """A saved state resumes only with the processes, chunk size and rows that made it."""
    if (shard["world_size"], shard["rank"]) != (world_size, rank):
        raise ConfigError(f"the saved state is rank {shard['rank']} of {shard['world_size']} processes, this "
                          f"process is rank {rank} of {world_size}: resume with {shard['world_size']} process(es)")
    if shard["rows_per_chunk"] != plan.rows_per_chunk:
        raise ConfigError(f"the saved state was made with speed.rows_per_chunk={shard['rows_per_chunk']}, this "
                          f"run has {plan.rows_per_chunk}: resume with the same setting")
    if list(shard["rows"]) != plan.rows(shard["chunk"], rank):
        raise ConfigError("the saved state holds other rows than this run plans: resume with the same "
                          "classes, seeds and number of processes")


def shard_state(plan: RowPlan, rank: int, world_size: int, chunk: int, local: list[int],
                done: Mapping[int, torch.Tensor]) -> dict:
    """What a checkpoint records of this process's share of the rows (checked by :func:`check_saved_shard`)."""
    return {"world_size": world_size, "rank": rank, "rows_per_chunk": plan.rows_per_chunk,
            "num_chunks": plan.num_chunks, "chunk": chunk, "rows": list(local), "done": sorted(done)}
