"""Feature-visualisation targets inside the network: a channel, a neuron, a direction, a layer's energy.

Each reads one layer's output (declared by :meth:`layers`) and returns a per-row loss ``[R]`` (the
negated activation: lower is better). A channel or direction is measured on the layer's vector per image
as the model family defines it (``ctx.reduction``: the spatial mean of a convolution's ``[B,C,H,W]``,
the mean over patch tokens of a transformer block's ``[B,N,D]``), so the same term serves CNNs and ViTs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from ..generation.context import StepContext
from ..errors import CheckpointError, ConfigError
from .algebra import Term

if TYPE_CHECKING:
    from ..models import Classifier


class LayerTerm(Term):
    """A term on the output of one layer (a module name of the network, ``logits`` for the output, or
    ``auto``: the middle layer of the model's activation path, resolved by :meth:`layers`).

    A feature term with ``index=None`` optimises each row's own target: it reads row r's index from
    ``ctx.targets[r, 0]`` (``[R, 1]`` int64, what ``protoscope-generate targets=[...]`` gives each row)."""

    def __init__(self, layer: str = "auto", index: int | None = None) -> None:
        super().__init__()
        self.layer = str(layer)
        self.index = None if index is None else int(index)

    def layers(self, classifier: "Classifier") -> list[str]:
        if self.layer == "auto":
            from ..models.classifier import LOGITS

            inner = [n for n in classifier.layer_names if n != LOGITS]
            if not inner:
                raise ConfigError(f"{type(self).__name__}: the model's path has no layer besides the logits; "
                                  "set objective.layer=<module name>")
            self.layer = inner[len(inner) // 2]
        return [self.layer]

    def fixed_target(self) -> int | None:
        return self.index

    def target_count(self, activation: torch.Tensor, reduction) -> int:
        """How many targets the layer offers (targets are 0..count-1), from its output on a probe batch."""
        return int(reduction(activation, self.layer).shape[1])

    def activation(self, ctx: StepContext) -> torch.Tensor:
        if self.layer == "logits":
            return ctx.logits
        if self.layer not in ctx.activations:
            raise RuntimeError(f"{type(self).__name__}: layer {self.layer!r} was not recorded "
                               f"(recorded: {sorted(ctx.activations)})")
        return ctx.activations[self.layer]

    def vector(self, ctx: StepContext) -> torch.Tensor:
        """The layer's vector per image, ``[R, D]``, reduced as the model family says."""
        return ctx.reduction(self.activation(ctx), self.layer)

    def row_index(self, ctx: StepContext) -> torch.Tensor:
        """Each row's target index ``[R]`` (int64) from ``ctx.targets``."""
        targets = ctx.targets
        if targets.dtype != torch.long or targets.dim() != 2 or targets.shape[1] != 1:
            raise ConfigError(f"{type(self).__name__}({self.layer!r}) without an index optimises each row's own "
                              "target: give the rows' indices as targets [R, 1] (int64), or fix index=")
        return targets[:, 0]

    def pick(self, values: torch.Tensor, ctx: StepContext, what: str) -> torch.Tensor:
        """``values[r, target of row r]`` for ``values`` ``[R, N]``."""
        if self.index is not None:
            self._check_index(self.index, values.shape[1], what)
            return values[:, self.index]
        return values.gather(1, self.row_index(ctx)[:, None])[:, 0]

    def _check_index(self, index: int, size: int, what: str) -> None:
        if not 0 <= index < size:
            raise ConfigError(f"{type(self).__name__}: {what} {index} is out of range for layer {self.layer!r} "
                              f"({size} {what}s: 0..{size - 1})")


class Channel(LayerTerm):
    """-(mean activation of channel ``index`` over positions or patch tokens): Lucent's ``channel``."""

    target_kind = "channel"

    def describe_target(self, index: int) -> str:
        return f"channel {index} of {self.layer}"

    def forward(self, ctx: StepContext) -> torch.Tensor:
        return -self.pick(self.vector(ctx), ctx, "channel")


class Neuron(LayerTerm):
    """-(activation of channel ``index`` at one position): Lucent's ``neuron``. ``position``: ``[y, x]``
    for a ``[B,C,H,W]`` output (default the centre), or a token number for ``[B,N,D]`` (default the
    middle patch token)."""

    target_kind = "neuron"

    def __init__(self, layer: str = "auto", index: int | None = None,
                 position: Sequence[int] | int | None = None) -> None:
        super().__init__(layer, index)
        self.position = position if position is None or isinstance(position, int) else [int(p) for p in position]

    def describe_target(self, index: int) -> str:
        where = "centre" if self.position is None else f"position {self.position}"
        return f"neuron {index} ({where}) of {self.layer}"

    def target_count(self, activation: torch.Tensor, reduction) -> int:
        return int(activation.shape[-1] if activation.dim() == 3 else activation.shape[1])

    def forward(self, ctx: StepContext) -> torch.Tensor:
        act = self.activation(ctx)
        if act.dim() == 4:
            _, c, h, w = act.shape
            y, x = (h // 2, w // 2) if self.position is None else (int(p) for p in self.position)
            self._check_index(y, h, "row")
            self._check_index(x, w, "column")
            return -self.pick(act[:, :, y, x], ctx, "channel")
        if act.dim() == 3:
            _, n, d = act.shape
            prefix = ctx.reduction.prefix_tokens
            token = prefix + (n - prefix) // 2 if self.position is None else int(self.position)
            self._check_index(token, n, "token")
            return -self.pick(act[:, token], ctx, "channel")
        return -self.pick(act, ctx, "channel")


class Direction(LayerTerm):
    """-(the layer's vector per image projected on a unit direction): a probe or dictionary feature,
    Lucent's ``direction``. ``direction``: a vector ``[D]``, or ``path`` to a ``.pt`` file holding a tensor
    (or a dict with the key ``direction``; loaded with ``weights_only=True``): one vector ``[D]``, or a
    dictionary ``[N, D]`` whose row ``index`` (or each row's own target, ``index=None``) is optimised."""

    target_kind = "direction"

    def __init__(self, layer: str = "auto", direction: Sequence[float] | torch.Tensor | None = None,
                 path: str | Path | None = None, index: int | None = None) -> None:
        vector = load_direction(path) if path is not None else direction
        if vector is None:
            raise ConfigError("objective direction: give objective.path=<.pt file holding a [D] or [N, D] tensor> "
                              "(or a direction vector)")
        vector = torch.as_tensor(vector, dtype=torch.float32)
        single = vector.dim() <= 1
        super().__init__(layer, 0 if single else index)
        vector = vector.reshape(1, -1) if single else vector.flatten(1)
        norm = vector.norm(dim=1, keepdim=True)
        if not torch.isfinite(norm).all() or (norm == 0).any():
            raise ConfigError("objective direction: a direction vector is zero or not finite")
        self.source = Path(path).stem if path is not None else "vector"
        self.single = single
        self.register_buffer("directions", vector / norm)

    @property
    def direction(self) -> torch.Tensor:
        """The unit direction of a single-vector term."""
        return self.directions[self.index if self.index is not None else 0]

    def describe_target(self, index: int) -> str:
        name = self.source if self.single else f"{index} of {self.source}"
        return f"direction {name} at {self.layer}"

    def target_count(self, activation: torch.Tensor, reduction) -> int:
        return int(self.directions.shape[0])

    def forward(self, ctx: StepContext) -> torch.Tensor:
        v = self.vector(ctx)
        if v.shape[1] != self.directions.shape[1]:
            raise ConfigError(f"Direction: layer {self.layer!r} has {v.shape[1]} dimensions per image, the "
                              f"direction has {self.directions.shape[1]}")
        return -self.pick(v @ self.directions.to(v).T, ctx, "direction")


class LayerEnergy(LayerTerm):
    """-(mean squared activation of the whole layer): DeepDream, Lucent's ``deepdream``. Its one target is
    the layer itself."""

    target_kind = "layer"

    def __init__(self, layer: str = "auto") -> None:
        super().__init__(layer, 0)

    def describe_target(self, index: int) -> str:
        return f"energy of {self.layer}"

    def target_count(self, activation: torch.Tensor, reduction) -> int:
        return 1

    def forward(self, ctx: StepContext) -> torch.Tensor:
        return -self.activation(ctx).pow(2).flatten(1).mean(1)


def load_direction(path: str | Path) -> torch.Tensor:
    """A direction vector from a ``.pt`` file (a tensor, or a dict with ``direction``); tensors only."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"direction file {path} does not exist: save one with torch.save(vector, path)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"cannot read the direction file {path} as tensors ({type(exc).__name__}: {exc})") \
            from None
    if isinstance(saved, dict):
        saved = saved.get("direction")
    if not isinstance(saved, torch.Tensor):
        raise CheckpointError(f"direction file {path} holds no tensor (nor a dict with the key 'direction')")
    return saved
