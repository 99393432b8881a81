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
    """A term on the output of one layer (a module name of the network, or ``logits``)."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = str(layer)

    def layers(self, classifier: "Classifier") -> list[str]:
        return [self.layer]

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

    def _check_index(self, index: int, size: int, what: str) -> None:
        if not 0 <= index < size:
            raise ConfigError(f"{type(self).__name__}: {what} {index} is out of range for layer {self.layer!r} "
                              f"({size} {what}s: 0..{size - 1})")


class Channel(LayerTerm):
    """-(mean activation of channel ``index`` over positions or patch tokens): Lucent's ``channel``."""

    def __init__(self, layer: str, index: int) -> None:
        super().__init__(layer)
        self.index = int(index)

    def forward(self, ctx: StepContext) -> torch.Tensor:
        v = self.vector(ctx)
        self._check_index(self.index, v.shape[1], "channel")
        return -v[:, self.index]


class Neuron(LayerTerm):
    """-(activation of channel ``index`` at one position): Lucent's ``neuron``. ``position``: ``[y, x]``
    for a ``[B,C,H,W]`` output (default the centre), or a token number for ``[B,N,D]`` (default the
    middle patch token)."""

    def __init__(self, layer: str, index: int, position: Sequence[int] | int | None = None) -> None:
        super().__init__(layer)
        self.index = int(index)
        self.position = position

    def forward(self, ctx: StepContext) -> torch.Tensor:
        act = self.activation(ctx)
        if act.dim() == 4:
            _, c, h, w = act.shape
            y, x = (h // 2, w // 2) if self.position is None else (int(p) for p in self.position)
            self._check_index(self.index, c, "channel")
            self._check_index(y, h, "row")
            self._check_index(x, w, "column")
            return -act[:, self.index, y, x]
        if act.dim() == 3:
            _, n, d = act.shape
            prefix = ctx.reduction.prefix_tokens
            token = prefix + (n - prefix) // 2 if self.position is None else int(self.position)
            self._check_index(self.index, d, "channel")
            self._check_index(token, n, "token")
            return -act[:, token, self.index]
        self._check_index(self.index, act.shape[1], "channel")
        return -act[:, self.index]


class Direction(LayerTerm):
    """-(the layer's vector per image projected on a unit ``direction``): a probe or dictionary feature,
    Lucent's ``direction``. ``direction``: a vector, or ``path`` to a ``.pt`` file holding a tensor ``[D]``
    or a dict with the key ``direction`` (loaded with ``weights_only=True``)."""

    def __init__(self, layer: str, direction: Sequence[float] | torch.Tensor | None = None,
                 path: str | Path | None = None) -> None:
        super().__init__(layer)
        vector = load_direction(path) if path is not None else direction
        if vector is None:
            raise ConfigError("objective direction: give objective.path=<.pt file holding a [D] tensor> "
                              "(or a direction vector)")
        vector = torch.as_tensor(vector, dtype=torch.float32).flatten()
        norm = vector.norm()
        if not torch.isfinite(norm) or norm == 0:
            raise ConfigError("objective direction: the direction vector is zero or not finite")
        self.register_buffer("direction", vector / norm)

    def forward(self, ctx: StepContext) -> torch.Tensor:
        v = self.vector(ctx)
        if v.shape[1] != self.direction.numel():
            raise ConfigError(f"Direction: layer {self.layer!r} has {v.shape[1]} dimensions per image, the "
                              f"direction has {self.direction.numel()}")
        return -(v @ self.direction.to(v))


class LayerEnergy(LayerTerm):
    """-(mean squared activation of the whole layer): DeepDream, Lucent's ``deepdream``."""

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
