"""Where an audit runs: one device, or ``task=patches`` split over several (``accelerator=``, ``devices=``).

The patch rows (class x seed) are independent (:mod:`protoscope.audit.patches`: a row depends only on its own
seed), so ``devices=W`` splits them into W contiguous blocks, one process per device (one per GPU; on a CPU the
threads are shared out). Each process writes its block to ``patches.shard<k>-of-<W>.pt`` as it ends; the parent
joins them in row order. A shard file holding the same settings, rows and carriers is reused, so an audit whose
process died resumes with only the missing blocks. The other tasks (screening, gains, candidates) are batched
forward passes and run on the first device.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from ..io import write_torch
from ..models import Classifier
from .patches import PatchResult, PatchSettings, optimise_patches

log = logging.getLogger("protoscope")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


def audit_devices(accelerator: str = "auto", devices: Any = 1) -> list[torch.device]:
    """The devices of ``accelerator`` (auto: CUDA when there is a GPU, else the CPU) and ``devices`` (a number, or
    auto: every visible GPU, one CPU process). Several CPU devices are several processes sharing the CPU."""
    accelerator = str(accelerator).lower()
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"accelerator={accelerator}: choose one of {', '.join(ACCELERATORS)}")
    gpus = torch.cuda.device_count()
    if accelerator == "auto":
        accelerator = "gpu" if gpus else "cpu"
    if accelerator in ("gpu", "cuda") and not gpus:
        raise ConfigError("accelerator=gpu but no CUDA GPU is visible: use accelerator=cpu (or auto)")
    if str(devices).lower() == "auto":
        count = gpus if accelerator != "cpu" else 1
    else:
        try:
            count = int(devices)
        except (TypeError, ValueError):
            count = 0
        if count < 1:
            raise ConfigError(f"devices={devices}: use a positive number of devices or auto")
    if accelerator == "cpu":
        return [torch.device("cpu")] * count
    if count > gpus:
        raise ConfigError(f"devices={count} but only {gpus} GPU(s) are visible: use devices<={gpus} or devices=auto")
    return [torch.device("cuda", i) for i in range(count)]


def row_blocks(rows: int, world: int) -> list[range]:
    """``rows`` split into ``world`` contiguous blocks whose sizes differ by at most one (empty blocks dropped)."""
    base, extra = divmod(rows, world)
    starts = [k * base + min(k, extra) for k in range(world + 1)]
    return [range(a, b) for a, b in zip(starts, starts[1:]) if b > a]


def shard_file(out_dir: Path, rank: int, world: int) -> Path:
    return Path(out_dir) / f"patches.shard{rank}-of-{world}.pt"


def optimise_on_devices(classifier: Classifier, carriers: torch.Tensor, classes: Sequence[int],
                        settings: PatchSettings, seeds: Sequence[int], devices: Sequence[torch.device],
                        out_dir: Path, key: str, progress: bool = True) -> PatchResult:
    """:func:`~protoscope.audit.patches.optimise_patches` of every row, split over ``devices`` (see the module)."""
    classes, seeds = [int(c) for c in classes], [int(s) for s in seeds]
    blocks = row_blocks(len(classes), len(devices))
    if len(blocks) <= 1:
        classifier.to(devices[0])
        return optimise_patches(classifier, carriers, classes, settings, seeds, progress=progress)
    world = len(blocks)
    todo = [k for k in range(world) if _load_shard(shard_file(out_dir, k, world), key) is None]
    if len(todo) < world:
        log.info("patches: reusing %d of %d shard files in %s", world - len(todo), world, out_dir)
    if todo:
        log.info("patches: %d rows over %d processes on %s", len(classes), world,
                 ", ".join(str(devices[k]) for k in range(world)))
        threads = max(1, torch.get_num_threads() // world) if devices[0].type == "cpu" else torch.get_num_threads()
        job = (classifier.to("cpu"), carriers.cpu(), classes, seeds, settings, blocks, list(devices), todo,
               str(out_dir), key, threads)
        try:
            torch.multiprocessing.start_processes(_shard_worker, args=(job,), nprocs=len(todo), join=True,
                                                  start_method="spawn")
        except torch.multiprocessing.ProcessException as exc:
            done = [k for k in todo if _load_shard(shard_file(out_dir, k, world), key) is not None]
            raise RuntimeError(f"a patch process died ({str(exc).strip().splitlines()[-1]}); {len(done)} of "
                               f"{len(todo)} blocks finished and are kept in {out_dir}: run the same command "
                               "again to resume") from None
    parts = [_load_shard(shard_file(out_dir, k, world), key) for k in range(world)]
    classifier.to(devices[0])
    return PatchResult(torch.cat([p["patches"].float() for p in parts]), classes, seeds, settings,
                       torch.cat([p["objective"].float() for p in parts]))


def _load_shard(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state if state.get("key") == key else None


def _shard_worker(index: int, job: tuple) -> None:
    """One spawned process: the rows of block ``todo[index]`` on its device, written to its shard file."""
    classifier, carriers, classes, seeds, settings, blocks, devices, todo, out_dir, key, threads = job
    rank = todo[index]
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    device = devices[rank]
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rows = blocks[rank]
    result = optimise_patches(classifier.to(device), carriers, [classes[i] for i in rows],
                              settings, [seeds[i] for i in rows], progress=rank == todo[0])
    write_torch(shard_file(Path(out_dir), rank, len(blocks)),
                {"patches": result.patches.clone(), "objective": result.objective.clone(),
                 "rows": [rows.start, rows.stop], "key": key})
