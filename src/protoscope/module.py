"""The LightningModule: the prototype batch is the only trainable parameter."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from .context import StepContext
from .errors import DivergenceError
from .models import Classifier, record_activations
from .objectives import Objective, probability_variance
from .params import ImageParam
from .regularizers import Regularizer
from .rows import Row, target_weights
from .transforms import RandomAffine


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
    """The "data" of a generation run: the step numbers still to run.

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


class RowRandom:
    """Per-row uniform random numbers for the transforms, generated in blocks of steps.

    Block b of row r is drawn from a generator seeded by (row seed, b) alone, so a row's
    transforms depend neither on the other rows in the batch nor on where a run was resumed.
    One host-to-device copy per block, not per step.
    """

    def __init__(self, seeds: Sequence[int], per_step: int, block: int = 64) -> None:
        self.seeds, self.per_step, self.block = list(seeds), per_step, block
        self._index, self._values = -1, None

    def _draw(self, seed: int, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63 - 1))
        return torch.rand(self.block, self.per_step, generator=g)

    def __call__(self, step: int, device: torch.device) -> torch.Tensor:
        index = step // self.block
        if index != self._index:
            self._values = torch.stack([self._draw(s, index) for s in self.seeds], 1).to(device)  # [block, R, n]
            self._index = index
        return self._values[step % self.block]


class PrototypeModule(pl.LightningModule):
    """Optimises R = classes x seeds prototypes in one batched forward pass per step.

    Each row's loss depends on that row alone, so rows can be sharded over processes:
    rank k computes the loss of rows k, k+W, ...; DDP's gradient average times W is then exact.
    """

    def __init__(self, classifier: Classifier, rows: Sequence[Row], param: ImageParam,
                 transform: RandomAffine, objective: Objective, regularizers: Mapping[str, Regularizer],
                 optimizer: Callable[..., torch.optim.Optimizer], schedule: Schedule,
                 transform_random: RowRandom, log_every: int = 25) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.classifier = classifier
        self.network = classifier.network
        self.rows = list(rows)
        self.param = param
        self.transform = transform
        self.objective = objective
        self.regularizers = nn.ModuleDict(dict(regularizers))
        self.optimizer_factory = optimizer
        self.schedule = schedule
        self.transform_random = transform_random
        self.log_every = max(1, int(log_every))
        self.recipe: dict = {}  # what decides the prototypes; saved with every checkpoint
        self.register_buffer("targets", target_weights(self.rows, classifier.num_classes))
        self.term_names = ["objective", *self.regularizers.keys()]
        self.register_buffer("first_bad_step", torch.full((len(self.term_names) + 1,), -1, dtype=torch.long))
        self._bn_layers = {n: m for n, m in self.network.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}

    # --- Lightning plumbing -------------------------------------------------------------
    strict_loading = False  # checkpoints hold the prototypes, not the frozen classifier

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith(("network.", "classifier."))}
        checkpoint["protoscope"] = {"recipe": self.recipe}  # a resume checks it against the run's config

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.param.parameters())

    def train_dataloader(self) -> StepLoader:
        return StepLoader(self.schedule.total_steps, lambda: self.global_step)

    def train(self, mode: bool = True) -> "PrototypeModule":
        super().train(mode)
        self.network.eval()  # the classifier stays in eval mode whatever Lightning asks
        return self

    # --- one step -----------------------------------------------------------------------
    def local_rows(self) -> torch.Tensor:
        """Indices of the rows this process computes the loss for."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        return torch.arange(rank, len(self.rows), world, device=self.device)

    def training_step(self, batch: int, batch_idx: int) -> None:
        step = self.global_step
        baseline = step < self.schedule.baseline_steps
        idx = self.local_rows()
        images = self.param()[idx]
        if baseline:
            use_t = self.schedule.baseline_transforms
            terms = {"baseline_pv": probability_variance(self._forward(images, idx, step, use_t)[0])}
        else:
            terms = self._prototype_terms(images, idx, step)
        total = torch.stack(list(terms.values())).sum(0)
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(total.sum() * self.trainer.world_size)
        opt.step()
        if not baseline:
            for reg in self.regularizers.values():
                reg.after_step(self.param, step - self.schedule.baseline_steps)
        self._watch_finite(terms, total, step, baseline)
        if (step + 1) % self.log_every == 0 or step + 1 == self.schedule.total_steps:
            self._check_finite()
            self.log_dict({f"loss/{k}": v.mean() for k, v in terms.items()} | {"loss/total": total.mean()},
                          on_step=True, on_epoch=False, batch_size=len(idx))

    def _forward(self, images: torch.Tensor, idx: torch.Tensor, step: int, transform: bool,
                 want_bn: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict]:
        u = self.transform_random(step, self.device)[idx] if transform else None
        inputs = self.transform(images, u)
        with ExitStack() as stack:
            bn = stack.enter_context(self._record_bn()) if want_bn else {}
            logits = self.network(inputs)
        return logits, inputs, bn

    def _prototype_terms(self, images: torch.Tensor, idx: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        want_bn = any(r.needs_bn_inputs for r in self.regularizers.values())
        layers = sorted({n for r in self.regularizers.values() for n in r.activation_layers(self.classifier)})
        with record_activations(self.network, layers, pooled=False) as acts:  # one hook manager for all terms
            logits, inputs, bn = self._forward(images, idx, step, True, want_bn)
        ctx = StepContext(images=images, inputs=inputs, logits=logits, targets=self.targets[idx], bn_inputs=bn,
                          activations=dict(acts))
        terms = {"objective": self.objective(logits, ctx.targets)}
        for name, reg in self.regularizers.items():
            value = reg(ctx)
            if value is not None:
                terms[name] = value
        return terms

    @contextmanager
    def _record_bn(self) -> Iterator[dict]:
        store: dict = {}
        handles = [m.register_forward_hook(self._bn_hook(n, store)) for n, m in self._bn_layers.items()]
        try:
            yield store
        finally:
            for h in handles:
                h.remove()

    @staticmethod
    def _bn_hook(name: str, store: dict):
        def hook(module, inputs, _output):
            store[name] = (inputs[0], module.running_mean, module.running_var)
        return hook

    # --- divergence: tracked on device, checked only at the logging interval ----------
    def _watch_finite(self, terms: Mapping[str, torch.Tensor], total: torch.Tensor, step: int, baseline: bool) -> None:
        names = ["baseline_pv"] if baseline else list(terms)
        for name in names:
            slot = len(self.term_names) if name == "baseline_pv" else self.term_names.index(name)
            bad = ~torch.isfinite(terms[name]).all()
            fresh = bad & (self.first_bad_step[slot] < 0)
            self.first_bad_step[slot : slot + 1].masked_fill_(fresh, step)

    def _check_finite(self) -> None:
        first = self.first_bad_step.tolist()  # the one host sync, at the logging interval
        bad = [(s, n) for s, n in zip(first, [*self.term_names, "baseline_pv"]) if s >= 0]
        if bad:
            step, name = min(bad)
            raise DivergenceError(
                f"loss term {name!r} became non-finite at step {step}. Lower optimizer.lr, lower that "
                "term's weight, or use param=fourier; outputs written before this point are kept."
            )

    # --- results --------------------------------------------------------------------------
    @torch.no_grad()
    def final_images(self) -> torch.Tensor:
        return self.param().detach()
