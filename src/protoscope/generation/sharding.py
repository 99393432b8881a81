"""Which process optimises which rows, and in which chunk: a deterministic plan every rank can compute.

Rows are independent, so a run's R = classes x seeds rows can be split over W processes and, when they
do not fit at once, into chunks optimised one after the other (each for the whole schedule). The seeds
of one class stay together (a *group*), so terms that compare the seeds of a class (diversity) see all
of them. The plan depends only on the rows, W and the chunk size, never on timing, so every rank derives
the same plan without communicating, and a resumed run finds its rows again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from .rows import Row


def row_groups(rows: Sequence[Row]) -> list[list[int]]:
    """Indices of consecutive rows that share their target (the seeds of one class, channel, ...)."""
    groups: list[list[int]] = []
    for i, row in enumerate(rows):
        if groups and rows[groups[-1][0]].target == row.target:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _split(n: int, parts: int) -> list[int]:
    """Sizes of ``parts`` contiguous, balanced slices of ``n`` items (the first ones one larger)."""
    base, extra = divmod(n, parts)
    return [base + (k < extra) for k in range(parts)]


@dataclass(frozen=True)
class RowPlan:
    """``chunks[c][r]``: the (global) row indices rank ``r`` optimises in chunk ``c``."""

    chunks: tuple[tuple[tuple[int, ...], ...], ...]
    world_size: int
    rows_per_chunk: int | None  # the setting that made the plan (None: one chunk)

    @property
    def num_chunks(self) -> int:
        return len(self.chunks)

    def rows(self, chunk: int, rank: int) -> list[int]:
        return list(self.chunks[chunk][rank])

    def rank_rows(self, rank: int) -> list[int]:
        """Every row ``rank`` optimises, chunk after chunk."""
        return [i for chunk in self.chunks for i in chunk[rank]]

    def max_rows(self, chunk: int) -> int:
        return max(len(rows) for rows in self.chunks[chunk])


def plan_rows(rows: Sequence[Row], world_size: int = 1, rows_per_chunk: int | None = None) -> RowPlan:
    """Split ``rows`` over ``world_size`` ranks and into chunks of at most ``rows_per_chunk`` rows per rank.

    Whole groups (the seeds of a class) are the unit; a chunk holds at least one group per rank even when
    a group has more rows than ``rows_per_chunk``. The groups are spread evenly: chunk-major, then rank,
    in row order, so the unchunked one-process plan is the rows in order.
    """
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    if rows_per_chunk is not None and int(rows_per_chunk) < 1:
        raise ConfigError(f"speed.rows_per_chunk={rows_per_chunk}: use a positive number of rows, auto or null")
    groups = row_groups(rows)
    if not groups:
        raise ConfigError("no rows to optimise")
    per_group = max(len(g) for g in groups)
    if rows_per_chunk is None:
        num_chunks = 1
    else:
        groups_per_chunk = max(1, int(rows_per_chunk) // per_group)
        num_chunks = max(1, math.ceil(len(groups) / (groups_per_chunk * world_size)))
    sizes = _split(len(groups), num_chunks * world_size)
    chunks, start = [], 0
    for c in range(num_chunks):
        per_rank = []
        for r in range(world_size):
            n = sizes[c * world_size + r]
            per_rank.append(tuple(i for g in groups[start:start + n] for i in g))
            start += n
        chunks.append(tuple(per_rank))
    return RowPlan(tuple(chunks), world_size, None if rows_per_chunk is None else int(rows_per_chunk))


# --- per-rank files ---------------------------------------------------------------------------------
def rank_file(path: str | Path, rank: int, world_size: int) -> Path:
    """The file of ``rank`` for a state file ``path``: ``path`` itself for one process, else
    ``<stem>.rank<k>-of-<W><suffix>`` beside it."""
    path = Path(path)
    if world_size == 1:
        return path
    return path.with_name(f"{path.stem}.rank{rank}-of-{world_size}{path.suffix}")


def saved_world_sizes(path: str | Path) -> list[int]:
    """The process counts whose state files for ``path`` exist (normally none or one)."""
    path = Path(path)
    found = {1} if path.is_file() else set()
    prefix, suffix = f"{path.stem}.rank", path.suffix
    if path.parent.is_dir():
        for f in path.parent.glob(f"{path.stem}.rank*-of-*{suffix}"):
            tail = f.name[len(prefix):-len(suffix) if suffix else None]
            try:
                found.add(int(tail.split("-of-")[1]))
            except (IndexError, ValueError):
                continue
    return sorted(found)


def check_world_size(path: str | Path, world_size: int) -> bool:
    """True when the state of ``path`` was saved by ``world_size`` processes; False when there is none;
    a ConfigError naming the process count to resume with otherwise."""
    saved = saved_world_sizes(path)
    if not saved:
        return False
    if world_size in saved and all(rank_file(path, r, world_size).is_file() for r in range(world_size)):
        return True
    if world_size in saved:
        missing = [r for r in range(world_size) if not rank_file(path, r, world_size).is_file()]
        raise ConfigError(f"the saved state {path} lacks the files of ranks {missing}; delete {Path(path).parent} "
                          "to start this run from the beginning")
    other = saved[0]
    raise ConfigError(
        f"the saved state {path} was made by {other} process{'es' if other > 1 else ''}, this run has "
        f"{world_size}: resume with the same number of processes (trainer.devices x trainer.num_nodes = {other}), "
        f"or delete {Path(path).parent} to start again")
