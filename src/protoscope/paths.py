"""Locations of the config tree, of default caches, of the trained models and of downloaded data."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parents[1]


def conf_dir() -> Path:
    """The Hydra config tree: ``$PROTOSCOPE_CONF`` or the repository's ``conf/``."""
    env = os.environ.get("PROTOSCOPE_CONF")
    path = Path(env) if env else REPO_DIR / "conf"
    if not (path / "generate.yaml").is_file():
        raise FileNotFoundError(
            f"protoscope config tree not found at {path}. Install protoscope from its "
            "repository with `pip install -e .`, or point PROTOSCOPE_CONF at a copy of conf/."
        )
    return path


def cache_dir() -> Path:
    """Root of protoscope's on-disk caches (``$PROTOSCOPE_CACHE`` or ``~/.cache/protoscope``)."""
    env = os.environ.get("PROTOSCOPE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "protoscope"


def models_dir() -> Path:
    """Where ``protoscope-train`` keeps its models (``$PROTOSCOPE_MODELS`` or ``~/.local/share/protoscope/models``)."""
    env = os.environ.get("PROTOSCOPE_MODELS")
    return Path(env) if env else Path.home() / ".local" / "share" / "protoscope" / "models"


def data_dir() -> Path:
    """Where downloaded datasets go (``$PROTOSCOPE_DATA`` or ``~/.local/share/protoscope/data``)."""
    env = os.environ.get("PROTOSCOPE_DATA")
    return Path(env) if env else Path.home() / ".local" / "share" / "protoscope" / "data"
