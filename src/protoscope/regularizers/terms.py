"""The regularisation terms. Every loss is per row ([R]) so rows never interact."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..generation.context import StepContext
from ..errors import ConfigError
from ..models.fold import batch_norms
from ..objectives.algebra import Term

if TYPE_CHECKING:
    from ..models import Classifier

log = logging.getLogger("protoscope")


class Regularizer(Term):
    """A weighted term: ``forward(ctx) -> [R]`` (already times ``weight``). Layers it reads are named by
    :meth:`~protoscope.objectives.Term.layers`. Edits of the parameterisation (blur) are not terms: see
    :mod:`protoscope.params.ops`."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    def forward(self, ctx: StepContext) -> torch.Tensor | None:
        return None


def roughness(images: torch.Tensor, p: int) -> torch.Tensor:
    """R_p per row: mean over (c,i,j) of |x[c,i+1,j]-x[c,i,j]|^p plus the same horizontally, ``[R]``."""
    dv = (images[..., 1:, :] - images[..., :-1, :]).abs().pow(p).flatten(1).mean(1)
    dh = (images[..., :, 1:] - images[..., :, :-1]).abs().pow(p).flatten(1).mean(1)
    return dv + dh


class TotalVariation(Regularizer):
    """L_hf = weight * R_p(x) / unit, per row, on the untransformed image x in [0,1].

    R_p(x) = mean_{c,i,j} |x[c,i+1,j]-x[c,i,j]|^p + mean_{c,i,j} |x[c,i,j+1]-x[c,i,j]|^p (the two
    means run over the C*(H-1)*W vertical and C*H*(W-1) horizontal neighbour pairs). Means, not sums,
    so the trade-off against L_c = -logit_c does not change with image size; ``unit`` fixes the scale:
    an image with R_p = unit costs one logit unit at weight 1. Defaults: unit 1e-3 for p=2 and 1e-2
    for p=1 (a typical ImageNet photo at 224 px has R_2 ~ 0.011 and R_1 ~ 0.073, so it costs ~10 logit
    units at weight 1; pixel noise costs several times that).
    """

    DEFAULT_UNIT = {1: 1e-2, 2: 1e-3}

    def __init__(self, weight: float = 1.0, p: int = 2, unit: float | None = None) -> None:
        super().__init__(weight)
        if p not in (1, 2):
            raise ValueError(f"total variation norm p must be 1 or 2, got {p}")
        self.p = p
        self.unit = float(self.DEFAULT_UNIT[p] if unit is None else unit)
        if self.unit <= 0:
            raise ValueError(f"total variation unit must be > 0, got {self.unit}")

    def forward(self, ctx: StepContext) -> torch.Tensor:
        return self.weight * roughness(ctx.images, self.p) / self.unit


class PixelL2(Regularizer):
    """Mean squared distance of pixels from mid-grey, per row (keeps colours from saturating)."""

    def forward(self, ctx: StepContext) -> torch.Tensor:
        return self.weight * (ctx.images - 0.5).pow(2).flatten(1).mean(1)


def check_option(value: str, options: tuple[str, ...], term: str, key: str, meaning: str) -> str:
    """``value`` when it is one of ``options``, else a ValueError naming the term, the key and what it means."""
    if value not in options:
        raise ValueError(f"{term}: {key} must be {' or '.join(options)} ({meaning}), got {value!r}")
    return value


def check_scope(scope: str, name: str) -> str:
    return check_option(scope, ("row", "batch"), name, "scope",
                        "each image's statistics, or those of all rows together as DeepInversion")


class BatchNormStats(Regularizer):
    """DeepInversion-style, data-free: the per-channel mean/variance at every batch-norm input should match
    the layer's running statistics, for each row (``scope=row``) or for all rows of the step together
    (``scope=batch``, DeepInversion's own form: rows then interact, so keep them in one process and chunk).
    ``tolerance``: a channel mean within ``tolerance`` running standard deviations of the running mean costs
    nothing (one photo's channel means lie 0.1-0.5 of them off it, and which way is what sets its class apart;
    0 pins every mean, as DeepInversion). ``without_batch_norms``: on a model without any, stop with an error
    (``error``) or leave the term out (``skip``). Extension beyond the paper."""

    needs_bn_inputs = True

    def __init__(self, weight: float = 1.0, scope: str = "row", tolerance: float = 0.0,
                 without_batch_norms: str = "error") -> None:
        super().__init__(weight)
        self.scope = check_scope(scope, "bn_stats")
        self.tolerance = check_tolerance(tolerance, "bn_stats")
        self.without_batch_norms = check_without_batch_norms(without_batch_norms, "bn_stats")

    def forward(self, ctx: StepContext) -> torch.Tensor:
        losses = [mean_excess(mean, running_mean, running_var, self.tolerance).norm(dim=1)
                  + (var - running_var).norm(dim=1)
                  for mean, var, running_mean, running_var in bn_input_moments(ctx, "bn_stats", self.scope)]
        return self.weight * torch.stack(losses, 1).mean(1)


def check_tolerance(tolerance: float, name: str) -> float:
    if tolerance < 0:
        raise ValueError(f"{name}: tolerance is how many running standard deviations a channel mean may lie off "
                         f"the running mean at no cost, >= 0 (got {tolerance})")
    return float(tolerance)


def mean_excess(mean: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                tolerance: float) -> torch.Tensor:
    """``mean - running_mean`` shrunk towards 0 by ``tolerance`` running standard deviations (0 inside)."""
    offset = mean - running_mean
    if tolerance == 0:
        return offset
    margin = tolerance * running_var.clamp_min(0).sqrt()
    return offset.sign() * torch.relu(offset.abs() - margin)


def check_without_batch_norms(value: str, name: str) -> str:
    return check_option(value, ("error", "skip"), name, "without_batch_norms",
                        "what a model without batch norms does with the term")


def batch_norm_terms(network: torch.nn.Module, terms: Mapping[str, Any], model: str = "the model") -> dict[str, Any]:
    """``terms`` as a model with or without batch norms can run them, checked before any step.

    On a model without batch norms a term that reads their statistics is left out (with a warning) when its
    ``without_batch_norms`` is ``skip``, and is a ConfigError otherwise."""
    needing = [name for name, term in terms.items() if getattr(term, "needs_bn_inputs", False)]
    if not needing or batch_norms(network):
        return dict(terms)
    required = [name for name in needing if getattr(terms[name], "without_batch_norms", "error") != "skip"]
    if required:
        which = (f"regularizers {', '.join(required)} read" if len(required) > 1
                 else f"regularizer {required[0]} reads")
        raise ConfigError(f"{which} the model's batch-norm running statistics, but "
                          f"{model} has no batch norms (a vision transformer has layer norms, which keep none): "
                          "leave the batch-norm terms out (e.g. regularizer=[tv]) or use a model with batch norms")
    log.warning("%s has no batch norms: the recipe runs without its batch-norm terms (%s)", model, ", ".join(needing))
    return {name: term for name, term in terms.items() if name not in needing}


def bn_input_moments(ctx: StepContext, name: str, scope: str = "row") -> list[tuple[torch.Tensor, ...]]:
    """Per batch-norm layer: the channel mean and variance ``[R, C]`` over each row's positions (``row``) or
    over every row's positions, repeated for each row (``batch``), and the layer's running mean and variance
    ``[C]``. Computed once per step and scope, whichever terms ask. ``name``: the term asking (for the error
    on a model without any)."""
    if not ctx.bn_inputs:
        raise ConfigError(f"regularizer {name} needs a model with batch norms; this one has none")
    if scope in ctx.bn_moments:
        return ctx.bn_moments[scope]
    out = []
    for layer, (x, running_mean, running_var) in ctx.bn_inputs.items():
        dims = tuple(range(2, x.dim())) if scope == "row" else (0, *range(2, x.dim()))
        count = x[0, 0].numel() * (1 if scope == "row" else len(x))  # positions per channel and row (or all rows)
        # sums, not mean/var (on a channels-last tensor those copy it), about the detached mean: the variance
        # formula E[d^2] - E[d]^2 is exact for any constant shift and keeps no cancellation at a large mean
        centre = (x.sum(dims, keepdim=True) / count).detach()
        centred = x - centre
        offset = centred.sum(dims) / count  # ~0, but carries the mean's gradient
        mean = centre.reshape(offset.shape) + offset
        # the clamp also zeroes the slope at a variance of 0 (a constant channel), where bn_layers' square root has none
        var = ((centred * centred).sum(dims) / count - offset * offset).clamp_min(0)
        if layer in ctx.bn_affine:  # folded: x is the batch norm's output; map its moments back to the input's
            scale, shift = ctx.bn_affine[layer]
            mean, var = mean * scale + shift, var * scale * scale
        out.append((mean.expand(len(x), -1), var.expand(len(x), -1), running_mean, running_var))
    ctx.bn_moments[scope] = out
    return out


class Diversity(Regularizer):
    """Diversity across the seeds of one class (Lucent's / the authors' diversity weight).

    For each row r: weight * mean over the other rows s with the same target classes of
    <G_r, G_s>, where G is the Gram matrix (channels x channels) of the activations at ``layer`` on the
    transformed image, divided by its Frobenius norm (a cosine similarity of style statistics in
    [-1, 1]). Minimising it pushes the seeds of a class apart. Rows without a same-class partner
    cost 0. Unlike the other terms, rows of one class interact: keep them in one process.
    ``layer``: a module name of the model, or ``auto`` (the middle layer of the model's path).
    """

    def __init__(self, weight: float = 1.0, layer: str = "auto") -> None:
        super().__init__(weight)
        self.layer = str(layer)
        # The layer it reads (``auto``: resolved by layers(), once the model is known).
        self._recorded: str | None = None if self.layer == "auto" else self.layer

    def layers(self, classifier: "Classifier") -> list[str]:
        from ..models.classifier import LOGITS

        if self.layer == "auto":
            inner = [n for n in classifier.layer_names if n != LOGITS]
            if not inner:
                raise ConfigError("regularizer diversity: the model's path has no layer besides the logits; "
                                  "set regularizer.diversity.layer=<module name>")
            self._recorded = inner[len(inner) // 2]
        return [self._recorded]

    def forward(self, ctx: StepContext) -> torch.Tensor:
        # The step records the union of every term's layers: take this term's own.
        if self._recorded not in ctx.activations:
            raise RuntimeError(f"regularizer diversity: its layer {self._recorded!r} was not recorded "
                               f"(recorded: {list(ctx.activations)})")
        act = ctx.activations[self._recorded]
        flat = act.flatten(2) if act.dim() > 2 else act.unsqueeze(-1)  # [R, C, P]
        gram = flat @ flat.transpose(1, 2) / flat.shape[-1]
        gram = gram.flatten(1)
        gram = gram / gram.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sim = gram @ gram.T  # [R, R]
        same = (ctx.targets[:, None, :] == ctx.targets[None, :, :]).all(-1)
        same.fill_diagonal_(False)
        partners = same.sum(1)
        loss = (sim * same).sum(1) / partners.clamp_min(1)
        return self.weight * loss
