"""The optimisation without a trainer: a :class:`Renderer` runs one step (parameterisation -> transforms
-> network -> terms) for a batch of rows, and :func:`render` runs the whole loop in a notebook::

    from protoscope import render
    from protoscope.objectives import Channel
    from protoscope.regularizers import TotalVariation
    images = render(net, Channel("layer3", 7) + 0.1 * TotalVariation(), steps=256, size=224)

:class:`~protoscope.generation.module.PrototypeModule` (Lightning) wraps the same :class:`Renderer` and adds rows,
chunks, processes, checkpoints and logging around it.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import trange

from .context import StepContext
from ..models import ActivationTap, Classifier
from ..models.classifier import Normalized, freeze
from ..models.fold import batch_norms, bn_scale_shift, fold_batchnorm
from ..models.reduce import Reduction
from ..objectives import Term, probability_variance
from ..params import ImageParam
from ..params.ops import ParamOp
from .speed import SpeedSettings
from ..transforms import RandomAffine

log = logging.getLogger("protoscope")


def no_autocast(device_type: str):
    """Full precision inside a mixed-precision step (parameterisation, transforms, losses)."""
    return torch.autocast(device_type, enabled=False) if device_type in ("cuda", "cpu") else nullcontext()


class RowRandom:
    """Per-row uniform random numbers for the transforms, generated in blocks of steps.

    Block b of row r is drawn from a generator seeded by (row seed, b) alone, so a row's
    transforms depend neither on the other rows in the batch, nor on its chunk or process, nor on
    where a run was resumed. One host-to-device copy per block, not per step.
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
            values = torch.stack([self._draw(s, index) for s in self.seeds], 1)  # [block, R, n]
            if device.type == "cuda":  # pinned: the copy does not wait for the device's queue
                values = values.pin_memory().to(device, non_blocking=True)
            self._values = values.to(device)
            self._index = index
        return self._values[step % self.block]


class Renderer(nn.Module):
    """One optimisation step for a batch of rows: ``losses(param, u, targets, baseline)`` -> per-row terms,
    then ``after_step(param, stage, step)`` for the parameter operations (e.g. blur) on their schedules.

    Holds the frozen network, the objective and named penalty terms (each a :class:`Term`), the
    random transform and the parameter operations (each a :class:`~protoscope.params.ops.ParamOp`). :meth:`prepare` sets up, once per device, what makes the step fast without changing
    what it computes: one activation tap for the union of the layers the terms read, batch norms folded
    into their convolutions (when no term reads activations), channels-last tensors, and optionally a
    compiled step. Only the network runs under the caller's mixed precision; the rest stays fp32.
    """

    def __init__(self, classifier: Classifier, objective: Term, penalties: Mapping[str, Term] | None = None,
                 transform: RandomAffine | None = None, speed: SpeedSettings | None = None,
                 param_ops: Sequence[ParamOp] = ()) -> None:
        super().__init__()
        self.classifier = classifier
        self.network = classifier.network
        self.objective = objective
        self.regularizers = nn.ModuleDict(dict(penalties or {}))
        self.transform = transform if transform is not None else RandomAffine()
        self.speed = speed or SpeedSettings()
        self.param_ops = list(param_ops)
        self.folded_network: nn.Module | None = None
        self._tap: ActivationTap | None = None
        self._ready = False

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        for key in ("_tap", "_losses"):  # runtime objects are rebuilt in each process
            state.pop(key, None)
        state["_ready"] = False
        return state

    @property
    def terms(self) -> list[Term]:
        return [self.objective, *self.regularizers.values()]

    def train(self, mode: bool = True) -> "Renderer":
        super().train(mode)
        self.network.eval()  # the classifier stays in eval mode whatever a trainer asks
        if self.folded_network is not None:
            self.folded_network.eval()
        return self

    # --- runtime: memory format, hooks (installed once), compiled step ----------------------
    def prepare(self, device: torch.device, size: int) -> None:
        self._device_type = device.type
        layers = sorted({n for t in self.terms for n in t.layers(self.classifier)})
        self._bn_modules = batch_norms(self.network.net) if any(t.needs_bn_inputs for t in self.terms) else {}
        self.folded_network = None
        self._bn_affine: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.speed.fold_batchnorm and not layers:
            # Terms that read batch-norm inputs get them back from a folded batch norm's output (an affine map)
            folded, count = fold_batchnorm(self.network, size, invertible=bool(self._bn_modules))
            if count:
                self.folded_network = folded.to(device)
                log.debug("folded %d batch norms into their convolutions", count)
                for name, bn in self._bn_modules.items():
                    if isinstance(folded.net.get_submodule(name), nn.Identity):
                        scale, shift = bn_scale_shift(bn)
                        self._bn_affine[name] = (1 / scale, -shift / scale)
        cl = self.speed.channels_last
        self._channels_last = device.type in ("cuda", "cpu") if cl == "auto" else bool(cl)
        if self._channels_last:
            self.step_network.to(memory_format=torch.channels_last)
        if getattr(self, "_tap", None) is not None:
            self._tap.remove()
        self._tap = (ActivationTap(self.step_network, layers, list(self._bn_modules))
                     if layers or self._bn_modules else None)
        self._losses = torch.compile(self._step_losses, dynamic=False) if self.speed.compile else self._step_losses
        self._ready = True

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def step_network(self) -> nn.Module:
        """The network the steps run: the batch-norm-folded copy when there is one, else the classifier's."""
        return self.folded_network if self.folded_network is not None else self.network

    # --- one step -----------------------------------------------------------------------
    def losses(self, param: ImageParam, u: torch.Tensor | None, targets: torch.Tensor,
               baseline: bool = False) -> dict[str, torch.Tensor]:
        """Per-row losses of one step (``baseline``: L_pv alone), by the compiled step when there is one."""
        return self._losses(param, u, targets, baseline)

    def _step_losses(self, param: ImageParam, u: torch.Tensor | None, targets: torch.Tensor,
                     baseline: bool) -> dict[str, torch.Tensor]:
        with no_autocast(self._device_type):
            images = param()
            inputs = self.transform(images, u) if u is not None else images
            if self._channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
        logits = self._network(inputs)
        with no_autocast(self._device_type):
            logits = logits.float()
            if baseline:
                return {"baseline_pv": probability_variance(logits)}
            bn = {n: (self._tap.inputs[n].float(), m.running_mean, m.running_var)
                  for n, m in self._bn_modules.items()}
            acts = {n: t.float() for n, t in self._tap.outputs.items()} if self._tap is not None else {}
            ctx = StepContext(images=images, inputs=inputs, logits=logits, targets=targets, bn_inputs=bn,
                              bn_affine=self._bn_affine, activations=acts, reduction=self.classifier.reduction)
            terms = {"objective": self.objective(ctx)}
            for name, reg in self.regularizers.items():
                value = reg(ctx)
                if value is not None:
                    terms[name] = value
        return terms

    def _network(self, inputs: torch.Tensor) -> torch.Tensor:
        """The network's logits for ``inputs``, with the tap holding this pass's activations; one row per
        call with ``speed.batch_invariant`` (the activations of the calls concatenated in row order)."""
        tap = self._tap
        if not self.speed.batch_invariant or inputs.shape[0] == 1:
            if tap is not None:
                tap.clear()
            return self.step_network(inputs)
        logits, outputs, inputs_seen = [], {}, {}
        for row in inputs.split(1):
            if tap is not None:
                tap.clear()
            logits.append(self.step_network(row))
            if tap is not None:
                for store, seen in ((outputs, tap.outputs), (inputs_seen, tap.inputs)):
                    for name, value in seen.items():
                        store.setdefault(name, []).append(value)
        if tap is not None:
            tap.outputs = {name: torch.cat(values) for name, values in outputs.items()}
            tap.inputs = {name: torch.cat(values) for name, values in inputs_seen.items()}
        return torch.cat(logits)

    def after_step(self, param: ImageParam, stage: str, step: int) -> None:
        """The parameter operations due after optimiser step ``step`` (from 0) of ``stage`` (``baseline`` or
        ``prototype``)."""
        with torch.no_grad(), no_autocast(self._device_type):
            for op in self.param_ops:
                op(param, stage, step)


# --- the notebook entry point ------------------------------------------------------------------
def as_classifier(model: Classifier | nn.Module, size: int = 224, mean: Sequence[float] = (0.0, 0.0, 0.0),
                  std: Sequence[float] = (1.0, 1.0, 1.0), reduction: Reduction | str = "spatial") -> Classifier:
    """A :class:`Classifier` as is, or a plain network (taking ``(x - mean) / std`` of images in [0,1]) frozen
    and wrapped as one."""
    if isinstance(model, Classifier):
        return model
    network = freeze(Normalized(model, mean, std))
    with torch.no_grad():
        classes = network(torch.zeros(1, len(mean), size, size)).shape[-1]
    return Classifier(name=type(model).__name__, network=network, class_names=[f"class_{k}" for k in range(classes)],
                      input_size=size, channels=len(mean),
                      reduction=reduction if isinstance(reduction, Reduction) else Reduction(reduction))


def _preset(group: str, name: str):
    """An object from a bundled config preset (``conf/<group>/<name>.yaml``), without Hydra's app."""
    from omegaconf import OmegaConf

    from ..hydra_utils import build
    from ..paths import conf_dir

    path = Path(conf_dir()) / group / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ValueError(f"unknown {group} {name!r}: choose from {', '.join(choices)}")
    return build(OmegaConf.load(path))


def render(model: Classifier | nn.Module, objective: Term, *, steps: int = 256, rows: int = 1,
           size: int | None = None, param: str | Callable[..., ImageParam] = "fourier",
           transform: str | RandomAffine = "m", lr: float = 0.05, seed: int = 0,
           penalties: Mapping[str, Term] | None = None, param_ops: Sequence[ParamOp] = (), targets: torch.Tensor | None = None,
           device: str | torch.device = "cpu", progress: bool = True) -> torch.Tensor:
    """Optimise ``rows`` images of ``objective`` (plus ``penalties``) for ``steps`` Adam steps, with the
    ``param_ops`` (e.g. ``Blur()``) after each (the ``prototype`` stage); returns them ``[rows, C, H, W]`` in [0,1]. ``param``: ``fourier``, ``pixel``, ``maco`` or a factory;
    ``transform``: a preset name (``none``, ``s``, ``m``, ``l``, ``xl``, ``lucent_style``) or a module;
    ``targets``: per-row class weights ``[rows, K]`` for class objectives that read them (``Logit()``), or
    per-row feature indices ``[rows, 1]`` (int64) for a feature term without an index (``Channel(layer)``)."""
    if steps < 0 or rows < 1:
        raise ValueError(f"render: steps must be >= 0 and rows >= 1 (got steps={steps}, rows={rows})")
    classifier = as_classifier(model)
    size = int(size or classifier.input_size)
    device = torch.device(device)
    transform = _preset("transform", transform) if isinstance(transform, str) else transform
    factory = _preset("param", param) if isinstance(param, str) else param
    renderer = Renderer(classifier, objective, penalties, transform, param_ops=param_ops).to(device)
    renderer.prepare(device, size)
    seeds = [seed * 1_000_003 + r for r in range(rows)]
    image = factory(rows=rows, channels=classifier.channels, size=size,
                    generators=[torch.Generator().manual_seed(s) for s in seeds]).to(device)
    if targets is None:
        targets = torch.zeros(rows, classifier.num_classes)
    targets = targets.to(device)
    optimizer = torch.optim.Adam(image.parameters(), lr=lr)
    random = RowRandom(seeds, RandomAffine.NUM_RANDOM)
    for step in trange(steps, desc="render", disable=not progress):
        optimizer.zero_grad(set_to_none=True)
        u = None if renderer.transform.is_identity else random(step, device)
        terms = renderer.losses(image, u, targets)
        torch.stack(list(terms.values())).sum().backward()
        optimizer.step()
        renderer.after_step(image, "prototype", step)
    with torch.no_grad():
        return image().detach()


@torch.no_grad()
def evaluate(model: Classifier | nn.Module, term: Term, images: torch.Tensor,
             targets: torch.Tensor | None = None) -> torch.Tensor:
    """``term``'s per-row loss on ``images`` (in [0,1], untransformed), e.g. how much a rendered image drives
    a channel compared with natural photos."""
    from ..models.hooks import record_activations

    classifier = as_classifier(model, size=images.shape[-1])
    layers = [n for n in term.layers(classifier) if n != "logits"]
    with record_activations(classifier.network, layers, reduce=None) as store:
        logits = classifier.network(images).float()
    if targets is None:
        targets = torch.zeros_like(logits)
    ctx = StepContext(images=images, inputs=images, logits=logits, targets=targets,
                      activations={n: store[n].float() for n in layers}, reduction=classifier.reduction)
    return term(ctx)
