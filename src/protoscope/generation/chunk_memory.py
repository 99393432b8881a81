"""How many prototype rows fit at once: the memory one row costs in a full step, measured, not guessed."""

from __future__ import annotations

import logging
import math
import os
from contextlib import nullcontext
from typing import Callable, Sequence

import torch

from ..params import ImageParam
from .renderer import Renderer
from .rows import Row, row_targets
from ..transforms import RandomAffine

log = logging.getLogger("protoscope")
ParamFactory = Callable[..., ImageParam]


def available_host_memory() -> int:
    """Bytes of host memory available to new allocations (Linux: MemAvailable), else 8 GiB."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30 if os.name != "nt" else 4 * 2**30


def rows_that_fit(per_row: int, rows: int, world: int, memory_fraction: float, device: torch.device) -> int | None:
    """Rows per process that fit ``memory_fraction`` of free memory (the least over processes); None: all."""
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_host_memory()
    fit = max(1, int(memory_fraction * free // max(per_row, 1)))
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([fit], device=device if device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        fit = int(t.item())
    need = math.ceil(rows / world)
    log.info("rows_per_chunk=auto: %.1f MiB per row, %.0f MiB free on %s: %d rows per chunk%s",
             per_row / 2**20, free / 2**20, device, min(fit, need), "" if fit < need else " (all rows)")
    return None if fit >= need else fit


def measure_row_bytes(renderer: Renderer, make_param: ParamFactory, rows: Sequence[Row], seed: int, channels: int,
                      size: int, device: torch.device, precision: str = "32-true") -> int:
    """Memory one more row costs in a full step: activations kept for the backward pass plus the
    parameter, its gradient and the optimiser's state (measured with 1 and 2 rows)."""
    costs, param = [], None
    try:
        for n in (1, 2):
            picked = list(range(n)) if len(rows) >= n else [0] * n
            param = make_param(rows=n, channels=channels, size=size,
                               generators=[rows[i].generator(seed, "init") for i in picked]).to(device)
            targets = row_targets([rows[i] for i in picked], renderer.classifier.num_classes).to(device)
            u = torch.rand(n, RandomAffine.NUM_RANDOM, device=device)
            costs.append(_step_bytes(renderer, param, u, targets, device, precision))
        state = sum(p.numel() * p.element_size() for p in param.parameters()) // 2 * 4
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return max(costs[1] - costs[0], costs[1] // 2, 1) + state


def _step_bytes(renderer: Renderer, param: ImageParam, u: torch.Tensor, targets: torch.Tensor,
                device: torch.device, precision: str) -> int:
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with autocast:
            terms = renderer._step_losses(param, u, targets, False)
        torch.stack(list(terms.values())).sum().backward()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        terms = renderer._step_losses(param, u, targets, False)
    torch.stack(list(terms.values())).sum().backward()
    return 2 * sum(seen.values())  # what the backward pass keeps, and about as much again while it runs
