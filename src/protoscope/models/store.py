"""The models folder: every ``protoscope-train`` model, named by a hash of its training recipe.

``<models_dir>/<family>-<hash12>.pt`` holds the bare network's state dict and ``<family>-<hash12>.json``
its sidecar (recipe, hash, classes, test accuracy, shortcut, run folder, time). ``family`` is the
training's ``model.name`` (``fashion_cnn``); the hash covers the settings that decide the weights, so
another recipe never replaces a model and the same recipe again rewrites the same name. The sidecar is
written last: a ``.pt`` without one is an unfinished model and is ignored.

A model config with a ``models_dir`` key and no ``checkpoint`` takes its weights from this folder:
``model.name=<family>`` picks the family's latest model trained without a shortcut (and with the
config's classes), ``model.name=<hash>``, a hash prefix (6+ characters) or a file stem picks that model.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from ..errors import CheckpointError, ConfigError

HASH_CHARS = 12
MIN_PREFIX = 6
# Top-level train.yaml settings that decide the weights (besides the architecture, data and shortcut).
TRAIN_KEYS = ("seed", "epochs", "lr", "weight_decay", "schedule", "augment", "batch_size")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def training_recipe(cfg: DictConfig) -> dict[str, Any]:
    """The settings of a ``protoscope-train`` config that decide the trained weights."""
    data = dict(_plain(cfg.train_data))
    data.pop("num_workers", None)
    if data.get("root"):
        data["root"] = str(Path(str(data["root"])).expanduser().resolve())
    shortcut = _plain(cfg.get("shortcut")) or None
    if shortcut:
        shortcut.pop("save_to", None)
    model = cfg.model
    return {
        "arch": _plain(model.arch), "input_size": int(model.input_size), "channels": int(model.channels),
        "mean": list(_plain(model.mean)), "std": list(_plain(model.std)),
        "train_data": data, "shortcut": shortcut, **{k: _plain(cfg.get(k)) for k in TRAIN_KEYS},
        "precision": str(cfg.trainer.get("precision", "32-true")),
    }


def recipe_hash(recipe: Mapping[str, Any]) -> str:
    """The first 12 hex digits of the SHA-256 of the recipe as canonical JSON."""
    text = json.dumps(recipe, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


@dataclass(frozen=True)
class StoredModel:
    """One model of the models folder: its weights file and its sidecar's contents."""

    path: Path
    info: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def hash(self) -> str:
        return str(self.info.get("hash", ""))

    @property
    def family(self) -> str:
        return str(self.info.get("family", ""))

    @property
    def shortcut(self) -> dict[str, Any] | None:
        return self.info.get("shortcut")

    def describe(self) -> str:
        """``fashion_cnn-3f2a9c1b7d0e (2026-12-01T10:00:00+00:00, accuracy 0.871[, shortcut ...])``."""
        parts = [str(self.info.get("created", "?"))]
        if self.info.get("test_accuracy") is not None:
            parts.append(f"accuracy {float(self.info['test_accuracy']):.3f}")
        if self.shortcut:
            mark = (self.shortcut.get("mark") or {}).get("kind") or "mark"
            parts.append(f"shortcut {mark} on {self.shortcut.get('target')}")
        return f"{self.name} ({', '.join(parts)})"


def save_model(models_dir: str | Path, family: str, state: Mapping[str, Any], recipe: Mapping[str, Any],
               info: Mapping[str, Any]) -> StoredModel:
    """Write ``<family>-<hash>.pt`` and then its sidecar ``<family>-<hash>.json`` (both atomically)."""
    from ..io import write_json, write_torch

    digest = recipe_hash(recipe)
    path = Path(models_dir).expanduser() / f"{family}-{digest}.pt"
    write_torch(path, dict(state))
    sidecar = {"name": path.stem, "family": family, "hash": digest, **info, "recipe": dict(recipe),
               "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
               "created_unix": time.time()}
    write_json(path.with_suffix(".json"), sidecar)
    return StoredModel(path, sidecar)


def stored_models(models_dir: str | Path) -> list[StoredModel]:
    """The complete models of a folder (weights and sidecar), oldest first."""
    folder = Path(models_dir).expanduser()
    found = []
    for sidecar in folder.glob("*.json") if folder.is_dir() else []:
        weights = sidecar.with_suffix(".pt")
        try:
            info = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and info.get("hash") and weights.is_file():
            found.append(StoredModel(weights, info))
    return sorted(found, key=lambda m: (float(m.info.get("created_unix", 0.0)), m.name))


def _listing(models: Sequence[StoredModel], limit: int = 6) -> str:
    shown = [m.describe() for m in reversed(models[-limit:])]
    more = f" and {len(models) - limit} older" if len(models) > limit else ""
    return "; ".join(shown) + more


def find_model(models_dir: str | Path, name: str, classes: Sequence[str] | None = None) -> StoredModel:
    """The model ``name`` selects (see the module doc); a CheckpointError in one line when none does."""
    folder = Path(models_dir).expanduser()
    models = stored_models(folder)
    where = f"{folder} (paths.models_dir, $PROTOSCOPE_MODELS)"
    if not models:
        raise CheckpointError(f"no trained model in {where}: run protoscope-train first, or load a file with "
                              "model.checkpoint=<state-dict file>")
    exact = [m for m in models if name in (m.name, m.hash)]
    if not exact and len(name) >= MIN_PREFIX:
        exact = [m for m in models if m.hash.startswith(name)]
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        raise CheckpointError(f"model.name={name} matches {len(exact)} models in {where}: "
                              f"{_listing(exact)}; give more of the hash")
    family = [m for m in models if m.family == name and not m.shortcut
              and (classes is None or m.info.get("classes") in (None, list(classes)))]
    if family:
        return family[-1]
    wanted = (f"no {name} model trained without a shortcut" if any(m.family == name for m in models)
              else f"no trained model named {name}")
    raise CheckpointError(f"{wanted} in {where}; it holds: {_listing(models)}. Pick one with "
                          "model.name=<hash or file stem>, or run protoscope-train")


def uses_models_dir(model: Mapping[str, Any] | None) -> bool:
    """Whether a model config takes its weights from the models folder (no explicit checkpoint)."""
    return model is not None and "models_dir" in model and not model.get("checkpoint")


def _config_classes(model: Mapping[str, Any]) -> list[str] | None:
    from ..validation import class_names_of

    try:
        return class_names_of(model)
    except Exception:  # noqa: BLE001 - no usable class list: do not filter by classes
        return None


def select_model(model: Mapping[str, Any]) -> StoredModel:
    """The stored model a model config selects (``model.name`` in ``model.models_dir``)."""
    from ..paths import models_dir

    try:
        folder = model.get("models_dir") or models_dir()
    except Exception:  # noqa: BLE001 - a model config composed on its own has no paths.models_dir
        folder = models_dir()
    name = model.get("name")
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        # a hash prefix of digits (and an 'e') reads as a number on the command line: 1727e19 -> 1.727e+22
        raise ConfigError(f"model.name={name} was read as a number: quote a hash or prefix of digits, "
                          f"e.g. model.name=\"'<hash prefix>'\" (the quotes keep it text)")
    return find_model(folder, str(name), _config_classes(model))


def pin_models(cfg: DictConfig, keys: Sequence[str] = ("model",), required: bool = True,
               earlier: Mapping[str, Any] | None = None) -> None:
    """Set ``checkpoint`` of each model config in ``keys`` that selects from the models folder to the
    selected file, so the run's config, recipe and record name the exact weights (a later training
    changes nothing). ``earlier``: the ``model`` entry of the run folder's record; a selection by the
    same name keeps its file (a resume uses the model it started with). With ``required=False`` a node
    whose selection fails is left as it is."""
    for key in keys:
        model = cfg.get(key)
        if not uses_models_dir(model):
            continue
        kept = (earlier or {}).get("file")
        if kept and (earlier or {}).get("name") == model.get("name") and Path(str(kept)).is_file():
            path = str(kept)
        else:
            try:
                path = str(select_model(model).path)
            except CheckpointError:
                if required:
                    raise
                continue
        with open_dict(model):
            model.checkpoint = path


def pinned(model: DictConfig) -> DictConfig:
    """``model`` itself, or for a selection from the models folder a resolved copy naming the selected file."""
    if not uses_models_dir(model):
        return model
    path = str(select_model(model).path)
    copy = OmegaConf.create(OmegaConf.to_container(model, resolve=True))
    copy.checkpoint = path
    return copy


def model_entry(model: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What ``run.json`` records of a model: its name, weights file and training-recipe hash (if known)."""
    if model is None:
        return None
    name = model.get("name")
    if uses_models_dir(model):
        try:
            chosen = select_model(model)
        except CheckpointError:
            return {"name": name, "file": None, "hash": None}
        return {"name": name, "file": str(chosen.path), "hash": chosen.hash}
    file = model.get("checkpoint")
    return {"name": name, "file": str(file) if file else None, "hash": trained_hash(file) if file else None}


def trained_hash(path: str | Path) -> str | None:
    """The training-recipe hash of a weights file: from its sidecar (models folder) or, for a train run
    folder's ``model.pt``, from that folder's ``metrics.json``; None for other files."""
    path = Path(str(path)).expanduser()
    for source, key in ((path.with_suffix(".json"), "hash"), (path.parent / "metrics.json", "model_hash")):
        if source == path or not source.is_file() or (key == "model_hash" and path.name != "model.pt"):
            continue
        try:
            value = json.loads(source.read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            return str(value)
    return None
