"""Build a frozen :class:`Classifier` from a ``model`` config group entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..hydra_utils import build
from .class_names import named_class_list
from .store import select_model, uses_models_dir
from .classifier import LOGITS, Classifier, Normalized, freeze, resolve_layers, state_digest
from .reduce import Reduction


def load_model(cfg: DictConfig | Mapping[str, Any]) -> Classifier:
    """Instantiate ``cfg.arch``, load ``cfg.checkpoint`` (or the model ``cfg.name`` selects in
    ``cfg.models_dir``, see :mod:`protoscope.models.store`) if given, wrap, freeze and check it."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    name = str(cfg.get("name", "model"))
    net: nn.Module = build(cfg.arch)
    if uses_models_dir(cfg):
        load_checkpoint(net, select_model(cfg).path)
    elif cfg.get("checkpoint"):
        load_checkpoint(net, cfg.checkpoint)
    channels = int(cfg.get("channels", 3))
    mean = list(cfg.get("mean", [0.0] * channels))
    std = list(cfg.get("std", [1.0] * channels))
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"model {name}: mean/std need {channels} values (model.channels), got {mean}/{std}")
    network = freeze(Normalized(net, mean, std))
    spec = cfg.get("class_names")
    spec = OmegaConf.to_container(spec) if isinstance(spec, (DictConfig,)) or OmegaConf.is_list(spec) else spec
    class_names = named_class_list(spec, cfg.get("num_classes"))
    clf = Classifier(
        name=name,
        network=network,
        class_names=class_names,
        input_size=int(cfg.input_size),
        channels=channels,
        layer_names=resolve_layers(net, list(cfg.get("layers", [LOGITS]))),
        weights_digest=state_digest(net),
        reduction=Reduction.from_config(_plain(cfg.get("reduction"))),
    )
    return clf


def load_checkpoint(net: nn.Module, path: str | Path) -> None:
    """Load a state dict (plain, or a Lightning checkpoint's ``state_dict``) with ``weights_only=True``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: set model.checkpoint to a state-dict file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"cannot read checkpoint {path} as weights ({type(exc).__name__}: {exc}). protoscope loads "
            "tensors only (weights_only=True): save it with torch.save(model.state_dict(), path)."
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    state = _strip_prefix(state, net)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit the architecture {type(net).__name__}: {exc}. "
            "Check model.arch (and its num_classes/in_channels) against how the checkpoint was trained."
        ) from exc


def _strip_prefix(state: dict, net: nn.Module) -> dict:
    """Drop a common prefix such as ``model.`` or ``module.`` that the bare network does not have."""
    own = set(net.state_dict())
    if set(state) & own:
        return state
    for prefix in ("model.", "module.", "net.", "network.net."):
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if stripped and set(stripped) & own:
            return stripped
    return state


def _plain(value: Any) -> Any:
    """A config node as plain Python (dicts and lists), anything else unchanged."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
