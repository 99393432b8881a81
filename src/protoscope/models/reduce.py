"""How a layer's output becomes one vector per image: declared per model family, part of every cache key.

A convolutional layer outputs ``[B, C, H, W]``: its vector is the mean over positions, ``[B, C]``. A
transformer block outputs ``[B, N, D]`` (tokens x embedding): its vector is the mean over the patch
tokens, ``[B, D]``, after dropping the ``prefix_tokens`` leading tokens (the class token, register
tokens). Averaging a transformer's output with the spatial rule would mean over the embedding and treat
tokens as channels, so a mismatch is an error, never a silent reshape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch

from ..errors import ConfigError

KINDS = ("spatial", "tokens")


@dataclass(frozen=True)
class Reduction:
    """``kind``: ``spatial`` (``[B, C, *positions]`` -> mean over positions) or ``tokens``
    (``[B, N, D]`` -> mean over tokens ``prefix_tokens:``). ``[B, C]`` outputs (logits, pooled
    features) pass through unchanged either way."""

    kind: str = "spatial"
    prefix_tokens: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"model.reduction.kind={self.kind!r}: use one of {', '.join(KINDS)}")
        if int(self.prefix_tokens) < 0:
            raise ConfigError(f"model.reduction.prefix_tokens={self.prefix_tokens}: must be >= 0")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | str | None) -> "Reduction":
        if cfg is None:
            return cls()
        if isinstance(cfg, str):
            return cls(kind=cfg)
        unknown = sorted(set(cfg) - {"kind", "prefix_tokens"})
        if unknown:
            raise ConfigError(f"unknown model.reduction settings {unknown}: use kind and prefix_tokens")
        return cls(kind=str(cfg.get("kind", "spatial")), prefix_tokens=int(cfg.get("prefix_tokens", 0)))

    def key(self) -> dict[str, Any]:
        """What a cached reference depends on."""
        return asdict(self)

    def __call__(self, t: torch.Tensor, layer: str = "") -> torch.Tensor:
        if t.dim() == 2:
            return t
        if self.kind == "tokens":
            if t.dim() != 3:
                raise ConfigError(f"layer {layer!r} outputs shape {list(t.shape)}, not [batch, tokens, dim]: "
                                  "model.reduction.kind=tokens is for transformer blocks; use spatial")
            if t.shape[1] <= self.prefix_tokens:
                raise ConfigError(f"layer {layer!r} has {t.shape[1]} tokens, model.reduction.prefix_tokens="
                                  f"{self.prefix_tokens} leaves none to average")
            return t[:, self.prefix_tokens:].mean(1)
        if t.dim() == 3:
            raise ConfigError(f"layer {layer!r} outputs shape {list(t.shape)} ([batch, tokens, dim]?): the spatial "
                              "mean would average over the embedding; set model.reduction.kind=tokens (and "
                              "model.reduction.prefix_tokens for a class token)")
        return t.flatten(2).mean(-1)
