"""What the SLURM preset asks for, from the trainer's settings (resolvers of conf/hydra/launcher/slurm.yaml)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """GPUs to ask for: one per device when the trainer runs on GPUs (``gpu``, ``cuda``, ``auto``), none
    (no ``--gpus-per-node``) for ``cpu``."""
    if str(accelerator).lower() not in ("gpu", "cuda", "auto"):
        return None
    return _count(devices)


def tasks_per_node(strategy: Any, devices: Any) -> int:
    """SLURM tasks per node: one per rank when the ranks are started from outside (``trainer=ddp``), else 1
    (one process that runs alone or spawns its ranks)."""
    from .validation import start_method

    if OmegaConf.is_config(strategy):
        strategy = OmegaConf.to_container(strategy, resolve=True)
    return _count(devices) if start_method(strategy) == "popen" else 1


def _count(devices: Any) -> int:
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.isdigit() else 1
