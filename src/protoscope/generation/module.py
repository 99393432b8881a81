"""The LightningModule: the prototype rows this process owns are its only trainable parameter."""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from .chunk_memory import measure_row_bytes, rows_that_fit
from .chunks import check_saved_shard, gather_rows, load_chunk, save_chunk, shard_state
from .divergence import DivergenceWatch, divergence_message
from ..io import write_torch
from ..models import Classifier
from ..objectives import Term
from ..params import ImageParam
from ..params.ops import ParamOp
from ..regularizers import Regularizer
from ..regularizers.terms import batch_norm_terms
from .renderer import Renderer, RowRandom
from .renderer import no_autocast as _no_autocast
from .rows import Row, row_targets
from .sharding import RowPlan, plan_rows
from .speed import SpeedSettings
from .strategy import require_own_rows
from ..transforms import RandomAffine

log = logging.getLogger("protoscope")


@dataclass
class Schedule:
    """The paper's two stages: ``baseline_steps`` on L_pv, then ``prototype_steps`` on L_c + regularisers."""

    baseline_steps: int = 30
    prototype_steps: int = 200
    baseline_transforms: bool = False
    #: regulariser name -> its weight's factor at the last prototype step (1 at the first, cosine in between),
    #: e.g. ``++schedule.anneal.tv=0.1`` anneals L_hf to a tenth of its weight
    anneal: Mapping[str, float] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return self.baseline_steps + self.prototype_steps

    def weight_factor(self, name: str, step: int) -> float:
        """The factor of term ``name``'s weight at schedule step ``step`` (1 unless annealed; the baseline
        stage is never annealed)."""
        end = self.anneal.get(name)
        if end is None or step < self.baseline_steps:
            return 1.0
        t = (step - self.baseline_steps) / max(self.prototype_steps - 1, 1)
        return float(end) + (1.0 - float(end)) * 0.5 * (1.0 + math.cos(math.pi * t))

    def check_anneal(self, names: Sequence[str]) -> None:
        """A ConfigError for an annealed name that is not one of the run's regularisers, or a negative factor."""
        from ..errors import ConfigError

        for name, end in self.anneal.items():
            if name not in names:
                raise ConfigError(f"schedule.anneal.{name}: the run has no regulariser named {name!r} (it has "
                                  f"{', '.join(names) or 'none'}); anneal one of those, e.g. ++schedule.anneal.tv=0.1")
            if not float(end) >= 0:
                raise ConfigError(f"schedule.anneal.{name}={end}: give the weight's final factor, a number >= 0")

    def stage_step(self, step: int) -> tuple[str, int]:
        """The stage of schedule step ``step`` and the step within it (both from 0)."""
        if step < self.baseline_steps:
            return "baseline", step
        return "prototype", step - self.baseline_steps


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
    """Lightning's view of a :class:`~protoscope.generation.renderer.Renderer` run over the rows this process owns.

    Every process owns disjoint rows (:func:`~protoscope.generation.sharding.plan_rows`; the strategy does not wrap
    the module in DDP) and optimises them in chunks, each for the whole schedule: global step g is step
    ``g % T`` of chunk ``g // T``. Losses and divergence records are gathered at the logging interval
    only; at the end rank 0 gathers every row into :meth:`final_result` (and ``result_path``).
    """

    rows_owned_per_rank = True  # RowShardedStrategy: no DDP wrapper, one checkpoint file per rank
    strict_loading = False  # checkpoints hold the prototypes, not the frozen classifier

    def __init__(self, classifier: Classifier, rows: Sequence[Row], param: Callable[..., ImageParam], size: int,
                 transform: RandomAffine, objective: Term, regularizers: Mapping[str, Regularizer],
                 optimizer: Callable[..., torch.optim.Optimizer], schedule: Schedule, seed: int = 0,
                 log_every: int = 25, speed: SpeedSettings | None = None, param_ops: Sequence[ParamOp] = ()) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.classifier = classifier
        self.speed = speed or SpeedSettings()
        schedule.check_anneal(list(regularizers))
        regularizers = batch_norm_terms(classifier.network, regularizers, classifier.name)
        self.renderer = Renderer(classifier, objective, regularizers, transform, self.speed, param_ops)
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
        self.divergence = DivergenceWatch(["objective", *self.renderer.regularizers.keys(), "baseline_pv"])
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

    def setup(self, stage: str) -> None:
        strategy, world = self.trainer.strategy, self.trainer.world_size
        require_own_rows(strategy, world)
        device = strategy.root_device
        self.network.to(device)
        self.renderer.prepare(device, self.size)
        rows_per_chunk = self.speed.rows_per_chunk
        if rows_per_chunk == "auto":  # what fits, measured on this device
            per_row = measure_row_bytes(self.renderer, self.param_factory, self.rows, self.seed,
                                        self.classifier.channels, self.size, device, str(self.trainer.precision))
            rows_per_chunk = rows_that_fit(per_row, len(self.rows), world, self.speed.memory_fraction, device)
        self.shard(self.trainer.global_rank, world, rows_per_chunk)

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
        shard = shard_state(self.plan, self.rank, self.world_size, self.chunk, self.local, self.done)
        checkpoint["protoscope"] = {"recipe": self.recipe, "shard": shard}  # a resume checks the recipe
        if self.chunk_dir is None:
            checkpoint["protoscope"]["done_images"] = dict(self.done)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Shape this process's parameters like the saved chunk, and reload the chunks already finished."""
        shard = (checkpoint.get("protoscope") or {}).get("shard")
        if shard is None:
            return  # a state saved before rows were sharded: one process, one chunk
        check_saved_shard(shard, self.plan, self.rank, self.world_size)
        saved = (checkpoint.get("protoscope") or {}).get("done_images")
        self.done = {}
        for c in shard["done"]:
            self.done[c] = saved[c] if saved is not None else load_chunk(
                self.chunk_dir, c, self.rank, self.world_size, self.plan.rows(c, self.rank))
        if shard["chunk"] != self.chunk:
            self._enter_chunk(shard["chunk"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.param.parameters())

    def train_dataloader(self) -> StepLoader:
        return StepLoader(self.total_steps, lambda: self.global_step)

    def _enter_chunk(self, chunk: int) -> None:
        """Make this process's rows of ``chunk`` the parameter, freshly initialised, with a fresh optimiser state."""
        rows = self.plan.rows(chunk, self.rank)
        fresh = self.param_factory(rows=len(rows), channels=self.classifier.channels, size=self.size,
                                   generators=[self.rows[i].generator(self.seed, "init") for i in rows])
        fresh.rowwise = self.renderer.speed.batch_invariant
        if self.param is None:
            self.param = fresh
        else:
            self.param.take_rows_(fresh)
            for opt in self.trainer.optimizers if self._trainer is not None else []:
                opt.state.clear()  # the next chunk starts as a fresh optimiser would
        device = self._row_ids.device
        self.chunk, self.local = chunk, rows
        self._targets = row_targets([self.rows[i] for i in rows], self.classifier.num_classes).to(device)
        self._row_ids = torch.tensor(rows, dtype=torch.long, device=device)
        self.transform_random = RowRandom([self.rows[i].stream_seed(self.seed, "transform") for i in rows],
                                          RandomAffine.NUM_RANDOM)

    def _finish_chunk(self, chunk: int) -> None:
        with torch.no_grad(), _no_autocast(self.renderer._device_type):
            images = self.param().detach().float().cpu()
        self.done[chunk] = images
        if self.chunk_dir is not None:
            save_chunk(self.chunk_dir, chunk, self.rank, self.world_size, self.local, images)

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
            if self.schedule.anneal:
                terms = {k: v * self.schedule.weight_factor(k, step) for k, v in terms.items()}
            self.manual_backward(torch.stack(list(terms.values())).sum())  # rows are independent: no scaling
        opt.step()
        if self.local:
            self.renderer.after_step(self.param, *self.schedule.stage_step(step))
            self.divergence.watch(terms, g, self._row_ids)
        last_of_chunk = step + 1 == steps
        if (g + 1) % self.log_every == 0 or last_of_chunk:
            self._sync_and_log(terms)
        if last_of_chunk:
            self._finish_chunk(chunk)
            if chunk + 1 < self.plan.num_chunks:
                self._enter_chunk(chunk + 1)

    # --- divergence: tracked on device, gathered and checked only at the logging interval --
    def _sync_and_log(self, terms: Mapping[str, torch.Tensor]) -> None:
        """Gather every process's loss sums and divergence records (one small collective), stop all
        processes together on a divergence, and log the loss means over all rows."""
        packet = self.divergence.packet(terms)
        if self.world_size > 1:
            packet = self.trainer.strategy.all_gather(packet)
        metrics, rows = self.divergence.read(packet, functools.partial(
            divergence_message, self.rows, self.schedule.total_steps, self.plan.num_chunks))
        if rows > 0:
            self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=rows)

    def on_train_end(self) -> None:
        if self.plan is None or self.global_step < self.total_steps or len(self.done) < self.plan.num_chunks:
            return  # stopped early: nothing to gather
        images = gather_rows(self.done, self.plan, self.rank, self.world_size,
                             (self.classifier.channels, self.size, self.size), self._row_ids.device,
                             self.trainer.strategy.all_gather if self.world_size > 1 else lambda t: t)
        if self.rank == 0:
            self._final = images
            if self.result_path is not None:
                write_torch(self.result_path, {"images": images, "steps": self.total_steps})

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
