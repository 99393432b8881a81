"""One entry point from a ``reference`` config group entry to reference statistics."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..hydra_utils import build
from ..models.classifier import Classifier
from .base import ReferenceSource, Split
from .stats import ReferenceStats, compute_reference_stats

# Keys of a reference config that are not options of the source constructor.
RUN_KEYS = ("name", "max_per_class", "batch_size", "seed", "num_workers", "cache", "cache_root",
            "part", "part_fraction", "part_seed")


def is_disabled(cfg: Any) -> bool:
    """True for ``reference: null`` / ``none`` (no reference statistics)."""
    if cfg is None:
        return True
    if isinstance(cfg, str):
        return cfg.strip().lower() in ("", "none", "null")
    return False


def build_source(cfg: DictConfig | Mapping[str, Any]) -> ReferenceSource:
    """Instantiate the source of a reference config: its ``_target_`` with every non-run key as option."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    name = cfg.get("name", "reference")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        example = " ".join(f"reference.{k}=..." for k in missing)
        raise ConfigError(f"reference {name}: {', '.join(missing)} must be set (e.g. `{example}` on the command line)")
    if "_target_" not in cfg:
        raise ConfigError(f"reference {name}: no _target_ (the source class, e.g. protoscope.reference.ImageFolderSource)")
    options = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in RUN_KEYS}
    source = build(OmegaConf.create(options), _convert_="all")
    if not isinstance(source, ReferenceSource):
        raise ConfigError(f"reference {name}: _target_ {cfg._target_} built a {type(source).__name__}, not a ReferenceSource")
    return source


def build_reference(cfg: DictConfig | Mapping[str, Any] | str | None, classifier: Classifier,
                    classes: Sequence[int] | None = None,
                    device: str | torch.device | None = None) -> ReferenceStats | None:
    """Reference statistics for a ``reference`` config entry; ``None`` when it is null/none.

    The entry has ``name``, ``_target_`` (a :class:`ReferenceSource`) with its options, and the
    run keys ``max_per_class``, ``batch_size``, ``seed`` (optional: ``num_workers``, ``cache``,
    ``cache_root``, and ``part`` = ``val``/``test`` with ``part_fraction``, ``part_seed``: a seeded,
    disjoint part of every class's images, see :class:`Split`).
    """
    if is_disabled(cfg) or (isinstance(cfg, (DictConfig, Mapping)) and is_disabled(cfg.get("name", "x"))):
        return None
    if not isinstance(cfg, (DictConfig, Mapping)):
        raise ConfigError(f"reference must be a config group entry or null, got {cfg!r}")
    source = build_source(cfg)
    split = Split(str(cfg.get("part")), float(cfg.get("part_fraction", 0.5)), int(cfg.get("part_seed", 0))) \
        if cfg.get("part") else None
    return compute_reference_stats(
        classifier, source, classes,
        max_per_class=int(cfg.get("max_per_class", 50)),
        batch_size=int(cfg.get("batch_size", 64)),
        device=device,
        seed=int(cfg.get("seed", 0)),
        num_workers=int(cfg.get("num_workers", 0)),
        cache=bool(cfg.get("cache", True)),
        cache_root=cfg.get("cache_root"),
        split=split,
    )
