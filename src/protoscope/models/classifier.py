"""The frozen classifier as protoscope sees it: images in [0,1] in, logits out."""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .reduce import Reduction

LOGITS = "logits"


class Normalized(nn.Module):
    """Wraps a network so that it takes images in [0,1]; normalisation happens inside."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)


@dataclass
class Classifier:
    """A frozen classifier and everything protoscope needs to know about it."""

    name: str
    network: Normalized
    class_names: list[str]
    input_size: int
    channels: int
    layer_names: list[str] = field(default_factory=list)
    weights_digest: str = ""
    reduction: Reduction = field(default_factory=Reduction)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to(self, device: torch.device | str) -> "Classifier":
        self.network.to(device)
        return self

    def preprocessing_key(self) -> dict:
        """What defines how images reach the network and how its layers become vectors (for cache keys)."""
        return {
            "input_size": self.input_size,
            "channels": self.channels,
            "mean": self.network.mean.flatten().tolist(),
            "std": self.network.std.flatten().tolist(),
            "reduction": self.reduction.key(),
        }


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients for any parameter."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def state_digest(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def resolve_layers(net: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Module names of ``net`` matching any pattern, in registration order.

    A pattern is a dotted name whose parts are fnmatch patterns matched part by part, so
    ``layer?.*`` selects ``layer1.0`` but not ``layer1.0.conv1``. The special name
    ``logits`` stands for the classifier's output.
    """
    names = [n for n, _ in net.named_modules() if n]
    chosen: list[str] = []
    for pattern in patterns:
        if pattern == LOGITS:
            continue
        matched = [n for n in names if _match(n, pattern)]
        if not matched:
            raise ConfigError(
                f"layer pattern {pattern!r} matches no module of the model. Some module names: "
                f"{names[:12]}... Fix model.layers (fnmatch patterns over named_modules())."
            )
        chosen.extend(n for n in matched if n not in chosen)
    order = {n: i for i, n in enumerate(names)}
    chosen.sort(key=order.__getitem__)
    if LOGITS in patterns:
        chosen.append(LOGITS)
    return chosen


def _match(name: str, pattern: str) -> bool:
    parts, pparts = name.split("."), pattern.split(".")
    return len(parts) == len(pparts) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pparts))
