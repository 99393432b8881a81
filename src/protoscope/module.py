"""The LightningModule: the prototype rows this process owns are its only trainable parameter."""

from __future__ import annotations

import logging
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from .errors import ConfigError, DivergenceError
from .io import write_torch
from .models import Classifier
from .objectives import Term
from .params import ImageParam
from .regularizers import Regularizer
from .renderer import Renderer, RowRandom
from .renderer import no_autocast as _no_autocast
from .rows import Row, target_weights
from .sharding import RowPlan, plan_rows, rank_file
from .speed import SpeedSettings
from .transforms import RandomAffine

log = logging.getLogger("protoscope")


@dataclass
class Schedule:
    """The paper's two stages: ``baseline_steps`` on L_pv, then ``prototype_steps`` on L_c + regularisers."""

    baseline_steps: int = 30
    prototype_steps: int = 200
    baseline_transforms: bool = False

    @property
    def total_steps(self) -> int:
        return self.baseline_steps + self.prototype_steps


class StepLoader:
    """The "data" of a generation run: the step numbers still to run (over all chunks).

    Its position is the optimisation step, which the checkpoint already holds, so it resumes exactly:
    iteration starts at ``start()`` (the restored global step). ``state_dict``/``load_state_dict``
    make that explicit to Lightning, which then knows a mid-run checkpoint resumes reliably.
    """

    def __init__(self, steps: int, start: Callable[[], int]) -> None:
        self.steps, self.start = int(steps), start

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start(), self.steps))

    def state_dict(self) -> dict:
        return {"step": self.start()}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: the position is the restored global step."""


class PrototypeModule(pl.LightningModule):
    """Optimises prototype rows with one batched forward pass per step.

    Each row's loss depends on that row (and the other seeds of its class) alone, so every process owns
    a disjoint set of rows (:func:`~protoscope.sharding.plan_rows`): it creates, optimises and
    checkpoints only those, and nothing is communicated while optimising (the strategy,
    :class:`~protoscope.strategy.RowShardedStrategy`, does not wrap the module in DDP). Rows that do not
    fit at once are optimised in chunks, one after the other, each for the whole schedule: global step
    g is step ``g % T`` of chunk ``g // T``. Divergence is tracked on the device and, with the loss
    means, gathered from every process at the logging interval: the only host synchronisation.
    At the end, rank 0 gathers every row into :meth:`final_result` (and ``result_path``).
    """

    rows_owned_per_rank = True  # RowShardedStrategy: no DDP wrapper, one checkpoint file per rank
    strict_loading = False  # checkpoints hold the prototypes, not the frozen classifier

    def __init__(self, classifier: Classifier, rows: Sequence[Row], param: Callable[..., ImageParam], size: int,
                 transform: RandomAffine, objective: Term, regularizers: Mapping[str, Regularizer],
                 optimizer: Callable[..., torch.optim.Optimizer], schedule: Schedule, seed: int = 0,
                 log_every: int = 25, speed: SpeedSettings | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.classifier = classifier
        self.speed = speed or SpeedSettings()
        self.renderer = Renderer(classifier, objective, regularizers, transform, self.speed)
        self.rows = list(rows)
        self.param_factory = param
        self.size = int(size)
        self.param: ImageParam | None = None  # this process's rows of the current chunk (see shard())
        self.optimizer_factory = optimizer
        self.schedule = schedule
        self.seed = int(seed)
        self.log_every = max(1, int(log_every))
        self.recipe: dict = {}  # what decides the prototypes; saved with every checkpoint
        self.chunk_dir: Path | None = None  # finished chunks are written here (else kept in the checkpoint)
        self.result_path: Path | None = None  # rank 0 writes the gathered images here at the end
        self.term_names = ["objective", *self.renderer.regularizers.keys(), "baseline_pv"]
        self.register_buffer("first_bad_step", torch.full((len(self.term_names),), -1, dtype=torch.long))
        self.register_buffer("first_bad_row", torch.full((len(self.term_names),), -1, dtype=torch.long))
        # this process's rows of the current chunk: target weights and row indices (moved with the module)
        self.register_buffer("_targets", torch.zeros(0, classifier.num_classes), persistent=False)
        self.register_buffer("_row_ids", torch.zeros(0, dtype=torch.long), persistent=False)
        self.plan: RowPlan | None = None
        self.rank, self.world_size = 0, 1
        self.chunk, self.local = -1, []
        self.done: dict[int, torch.Tensor] = {}  # chunk -> final images of this rank's rows (CPU, fp32)
        self._final: torch.Tensor | None = None

    @property
    def network(self) -> nn.Module:
        return self.renderer.network

    @property
    def transform(self) -> RandomAffine:
        return self.renderer.transform

    # --- Lightning plumbing -------------------------------------------------------------

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if world > 1 and not getattr(strategy, "writes_checkpoints_atomically", False):
            raise ConfigError(f"trainer.strategy={type(strategy).__name__} would copy every row to every process: "
                              "use trainer=ddp or trainer=ddp_spawn (protoscope's RowShardedStrategy: each process "
                              "owns its rows)")
        device = strategy.root_device
        self.network.to(device)
        self.renderer.prepare(device, self.size)
        rows_per_chunk = self.speed.rows_per_chunk
        if rows_per_chunk == "auto":
            rows_per_chunk = self._auto_rows_per_chunk(device, world)
        self.shard(rank, world, rows_per_chunk)

    def shard(self, rank: int = 0, world_size: int = 1, rows_per_chunk: int | None = None) -> None:
        """Plan which rows this process owns and create the parameterisation of its first chunk."""
        if not self.renderer.ready:
            self.renderer.prepare(self.network.mean.device, self.size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.plan = plan_rows(self.rows, self.world_size, rows_per_chunk)
        self.done.clear()
        self._enter_chunk(0)
        if self.plan.num_chunks > 1 or self.world_size > 1:
            log.info("rank %d of %d: %d rows in %d chunk(s) of up to %s rows", self.rank, self.world_size,
                     len(self.plan.rank_rows(self.rank)), self.plan.num_chunks,
                     max(self.plan.max_rows(c) for c in range(self.plan.num_chunks)))

    @property
    def total_steps(self) -> int:
        """Steps over all chunks (what progress and ETA count)."""
        chunks = self.plan.num_chunks if self.plan is not None else 1
        return chunks * self.schedule.total_steps

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith("renderer.")}
        shard = {"world_size": self.world_size, "rank": self.rank, "rows_per_chunk": self.plan.rows_per_chunk,
                 "num_chunks": self.plan.num_chunks, "chunk": self.chunk, "rows": list(self.local),
                 "done": sorted(self.done)}
        checkpoint["protoscope"] = {"recipe": self.recipe, "shard": shard}  # a resume checks the recipe
        if self.chunk_dir is None:
            checkpoint["protoscope"]["done_images"] = dict(self.done)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Shape this process's parameters like the saved chunk, and reload the chunks already finished."""
        shard = (checkpoint.get("protoscope") or {}).get("shard")
        if shard is None:
            return  # a state saved before rows were sharded: one process, one chunk
        if (shard["world_size"], shard["rank"]) != (self.world_size, self.rank):
            raise ConfigError(f"the saved state is rank {shard['rank']} of {shard['world_size']} processes, this "
                              f"process is rank {self.rank} of {self.world_size}: resume with "
                              f"{shard['world_size']} process(es)")
        if shard["rows_per_chunk"] != self.plan.rows_per_chunk:
            raise ConfigError(f"the saved state was made with speed.rows_per_chunk={shard['rows_per_chunk']}, this "
                              f"run has {self.plan.rows_per_chunk}: resume with the same setting")
        if list(shard["rows"]) != self.plan.rows(shard["chunk"], self.rank):
            raise ConfigError("the saved state holds other rows than this run plans: resume with the same "
                              "classes, seeds and number of processes")
        saved = (checkpoint.get("protoscope") or {}).get("done_images")
        self.done = {}
        for c in shard["done"]:
            self.done[c] = saved[c] if saved is not None else self._load_chunk(c)
        if shard["chunk"] != self.chunk:
            self._enter_chunk(shard["chunk"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.param.parameters())

    def train_dataloader(self) -> StepLoader:
        return StepLoader(self.total_steps, lambda: self.global_step)

    # --- chunks ---------------------------------------------------------------------------
    def _enter_chunk(self, chunk: int) -> None:
        """Make this process's rows of ``chunk`` the parameter, freshly initialised, with a fresh optimiser state."""
        rows = self.plan.rows(chunk, self.rank)
        fresh = self.param_factory(rows=len(rows), channels=self.classifier.channels, size=self.size,
                                   generators=[self.rows[i].generator(self.seed, "init") for i in rows])
        if self.param is None:
            self.param = fresh
        else:
            with torch.no_grad():
                for p, q in zip(self.param.parameters(), fresh.parameters()):
                    p.data = q.data.to(p.device, p.dtype)
            self.param.rows = fresh.rows
            if self._trainer is not None:
                for opt in self.trainer.optimizers:
                    opt.state.clear()  # the next chunk starts as a fresh optimiser would
        device = self.first_bad_step.device
        self.chunk, self.local = chunk, rows
        self._targets = target_weights([self.rows[i] for i in rows], self.classifier.num_classes).to(device)
        self._row_ids = torch.tensor(rows, dtype=torch.long, device=device)
        self.transform_random = RowRandom([self.rows[i].stream_seed(self.seed, "transform") for i in rows],
                                          RandomAffine.NUM_RANDOM)
        self._slots: dict[tuple[str, ...], torch.Tensor] = {}

    def _chunk_file(self, chunk: int) -> Path:
        return rank_file(self.chunk_dir / f"chunk{chunk:05d}.pt", self.rank, self.world_size)

    def _finish_chunk(self, chunk: int) -> None:
        with torch.no_grad(), _no_autocast(self.renderer._device_type):
            images = self.param().detach().float().cpu()
        self.done[chunk] = images
        if self.chunk_dir is not None:
            write_torch(self._chunk_file(chunk), {"rows": list(self.local), "images": images})

    def _load_chunk(self, chunk: int) -> torch.Tensor:
        path = self._chunk_file(chunk)
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"the finished chunk {path} of the saved state is missing or unreadable ({exc}); "
                              f"delete {self.chunk_dir.parent} to start this run from the beginning") from None
        if list(saved["rows"]) != self.plan.rows(chunk, self.rank):
            raise ConfigError(f"{path} holds other rows than this run plans: delete {self.chunk_dir.parent}")
        return saved["images"]

    # --- one step -----------------------------------------------------------------------
    def training_step(self, batch: int, batch_idx: int) -> None:
        steps = self.schedule.total_steps
        g = self.global_step
        chunk, step = divmod(g, steps)
        if chunk != self.chunk:
            self._enter_chunk(chunk)
        baseline = step < self.schedule.baseline_steps
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        terms: dict[str, torch.Tensor] = {}
        if self.local:  # a process may hold no rows of a chunk (fewer classes than processes)
            transformed = not baseline or self.schedule.baseline_transforms
            u = self.transform_random(step, self.device) if transformed and not self.transform.is_identity else None
            terms = self.renderer.losses(self.param, u, self._targets, baseline)
            self.manual_backward(torch.stack(list(terms.values())).sum())  # rows are independent: no scaling
        opt.step()
        if self.local:
            if not baseline:
                self.renderer.after_step(self.param, step - self.schedule.baseline_steps)
            self._watch_finite(terms, g)
        last_of_chunk = step + 1 == steps
        if (g + 1) % self.log_every == 0 or last_of_chunk:
            self._sync_and_log(terms)
        if last_of_chunk:
            self._finish_chunk(chunk)
            if chunk + 1 < self.plan.num_chunks:
                self._enter_chunk(chunk + 1)

    # --- divergence: tracked on device, gathered and checked only at the logging interval --
    def _slot_index(self, names: tuple[str, ...]) -> torch.Tensor:
        index = self._slots.get(names)
        if index is None:
            index = torch.tensor([self.term_names.index(n) for n in names], device=self.first_bad_step.device)
            self._slots[names] = index
        return index

    def _watch_finite(self, terms: Mapping[str, torch.Tensor], step: int) -> None:
        """Remember, per term, the first step and row with a non-finite loss (no host synchronisation)."""
        slots = self._slot_index(tuple(terms))
        bad = ~torch.isfinite(torch.stack([v.detach() for v in terms.values()]))  # [terms, rows]
        row = self._row_ids[bad.int().argmax(1)]  # the first bad row of each term
        known = self.first_bad_step[slots]
        fresh = bad.any(1) & (known < 0)
        self.first_bad_step[slots] = torch.where(fresh, step, known)
        self.first_bad_row[slots] = torch.where(fresh, row, self.first_bad_row[slots])

    def _sync_and_log(self, terms: Mapping[str, torch.Tensor]) -> None:
        """Gather every process's loss sums and divergence records (one small collective), stop all
        processes together on a divergence, and log the loss means over all rows."""
        n = len(self.term_names)
        device = self.first_bad_step.device
        sums = torch.zeros(n, dtype=torch.float64, device=device)
        counts = torch.zeros(n, dtype=torch.float64, device=device)
        if terms:
            slots = self._slot_index(tuple(terms))
            values = torch.stack([v.detach() for v in terms.values()]).double()
            sums[slots] = values.sum(1)
            counts[slots] = float(values.shape[1])
        packet = torch.cat([sums, counts, self.first_bad_step.double(), self.first_bad_row.double()])
        if self.world_size > 1:
            packet = self.trainer.strategy.all_gather(packet)
        table = packet.reshape(-1, 4, n).tolist()  # the one host synchronisation, at the logging interval
        bad = [(int(r[2][k]), int(r[3][k]), k) for r in table for k in range(n) if r[2][k] >= 0]
        if bad:
            raise DivergenceError(self._divergence_message(*min(bad)))
        total_sum = [sum(r[0][k] for r in table) for k in range(n)]
        total_count = [sum(r[1][k] for r in table) for k in range(n)]
        rows = max(total_count)
        metrics = {f"loss/{name}": total_sum[k] / total_count[k] for k, name in enumerate(self.term_names)
                   if total_count[k] > 0}
        if rows > 0:
            metrics["loss/total"] = sum(total_sum) / rows
            self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=int(rows))

    def _divergence_message(self, step: int, row: int, slot: int) -> str:
        steps = self.schedule.total_steps
        chunk, local = divmod(step, steps)
        where = f" (chunk {chunk + 1} of {self.plan.num_chunks})" if self.plan.num_chunks > 1 else ""
        r = self.rows[row]
        return (f"loss term {self.term_names[slot]!r} became non-finite at step {local}{where}, row {row} "
                f"(class {r.class_index} {r.name!r}, seed index {r.seed}). Lower optimizer.lr, lower that "
                "term's weight, or use param=fourier; outputs written before this point are kept.")

    # --- results --------------------------------------------------------------------------
    def on_train_end(self) -> None:
        if self.plan is None or self.global_step < self.total_steps or len(self.done) < self.plan.num_chunks:
            return  # stopped early: nothing to gather
        images = self._gather()
        if self.rank == 0:
            self._final = images
            if self.result_path is not None:
                write_torch(self.result_path, {"images": images, "steps": self.total_steps})

    def _gather(self) -> torch.Tensor | None:
        """Every row's final image on rank 0, in row order ([R,C,H,W] fp32, CPU); None elsewhere."""
        shape = (self.classifier.channels, self.size, self.size)
        out = torch.empty(len(self.rows), *shape) if self.rank == 0 else None
        for c in range(self.plan.num_chunks):
            local = self.done[c]
            if self.world_size == 1:
                out[self.plan.rows(c, 0)] = local
                continue
            buf = torch.zeros(self.plan.max_rows(c), *shape, device=self.first_bad_step.device)
            buf[: len(local)] = local.to(buf.device)
            gathered = self.trainer.strategy.all_gather(buf)  # [W, rows, C, H, W]
            if self.rank == 0:
                for r in range(self.world_size):
                    rows = self.plan.rows(c, r)
                    out[rows] = gathered[r, : len(rows)].cpu()
        return out

    @torch.no_grad()
    def final_result(self) -> tuple[torch.Tensor, int]:
        """All rows' final images [R,C,H,W] and the steps run over all chunks: in memory on the process
        that was rank 0, else (the main process of ``ddp_spawn``) from ``result_path``."""
        if self._final is not None:
            return self._final, self.total_steps
        if self.result_path is not None and Path(self.result_path).is_file():
            saved = torch.load(self.result_path, map_location="cpu", weights_only=True)
            return saved["images"], int(saved["steps"])
        if self.param is not None and self.plan is not None and self.plan.num_chunks == 1 and self.world_size == 1:
            return self.param().detach(), self.total_steps
        raise RuntimeError("no final images: the optimisation did not complete")

    # --- chunk size from the measured memory of one row -------------------------------------
    def _auto_rows_per_chunk(self, device: torch.device, world: int) -> int | None:
        """The rows per process that fit ``speed.memory_fraction`` of free memory (None: all of them)."""
        per_row = self._measure_row_bytes(device)
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
        else:
            free = _available_host_memory()
        fit = max(1, int(self.speed.memory_fraction * free // max(per_row, 1)))
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([fit], device=device if device.type == "cuda" else "cpu")
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
            fit = int(t.item())
        need = math.ceil(len(self.rows) / world)
        log.info("rows_per_chunk=auto: %.1f MiB per row, %.0f MiB free on %s: %d rows per chunk%s",
                 per_row / 2**20, free / 2**20, device, min(fit, need), "" if fit < need else " (all rows)")
        return None if fit >= need else fit

    def _measure_row_bytes(self, device: torch.device) -> int:
        """Memory one more row costs in a full step: activations kept for the backward pass plus the
        parameter, its gradient and the optimiser's state (measured with 1 and 2 rows)."""
        self.to(device)
        saved_param = self.param
        costs = []
        try:
            for n in (1, 2):
                rows = list(range(n)) if len(self.rows) >= n else [0] * n
                self.param = self.param_factory(rows=n, channels=self.classifier.channels, size=self.size,
                                                generators=[self.rows[i].generator(self.seed, "init") for i in rows]).to(device)
                targets = target_weights([self.rows[i] for i in rows], self.classifier.num_classes).to(device)
                u = torch.rand(n, RandomAffine.NUM_RANDOM, device=device)
                costs.append(self._probe(device, u, targets))
            state = sum(p.numel() * p.element_size() for p in self.param.parameters()) // 2 * 4
        finally:
            self.param = saved_param
            if device.type == "cuda":
                torch.cuda.empty_cache()
        return max(costs[1] - costs[0], costs[1] // 2, 1) + state

    def _probe(self, device: torch.device, u: torch.Tensor, targets: torch.Tensor) -> int:
        precision = str(self._trainer.precision) if self._trainer is not None else "32-true"
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            with autocast:
                terms = self.renderer._step_losses(self.param, u, targets, False)
            torch.stack(list(terms.values())).sum().backward()
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) - base
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
            terms = self.renderer._step_losses(self.param, u, targets, False)
        torch.stack(list(terms.values())).sum().backward()
        return 2 * sum(seen.values())  # what the backward pass keeps, and about as much again while it runs


def _available_host_memory() -> int:
    """Bytes of host memory available to new allocations (Linux: MemAvailable), else 8 GiB."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30 if os.name != "nt" else 4 * 2**30
