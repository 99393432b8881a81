"""What can be evaluated: a ``protoscope-generate`` run folder, or any folder of images.

Run folder
    ``<run>/prototypes.pt`` (``images``, ``class_indices``, ``class_names``, ``seeds``) and
    ``<run>/config.yaml`` (its ``model`` node rebuilds the classifier). Hybrid rows (several target
    classes) have no single class-mean path and are skipped with a logged note.

Image folder (e.g. images made by Lucent or another tool), with the class of each image given by
    * sub-folders (``mapping`` unset): ``folder/<class>/<image>``, ``<class>`` a class name of the
      model (case, spaces, ``_`` and ``-`` ignored) or an integer class index; or
    * a mapping file ``mapping=<file>.csv`` (rows ``filename,class``; an optional header row whose
      first cell is ``file``/``filename``/``path``/``image``) or ``<file>.json``
      (``{"filename": class}``); file names are relative to the folder, classes are names or indices.
    Images must already have the model's size and channels (an RGB image with equal channels counts
    as grey); ``resize=True`` allows a shorter-side resize, centre crop and channel conversion.
    The seed of an image is parsed from ``seed<digits>`` in its file name, else its index in its class.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..models import Classifier
from ..reference import match_class, prepare
from ..reference.base import close_names
from ..reference.folder import IMAGE_EXTENSIONS
from ..reference.preprocess import read_image

log = logging.getLogger("protoscope")
_SEED = re.compile(r"seed[_-]?(\d+)", re.IGNORECASE)
_HEADER = ("file", "filename", "path", "image", "name")


@dataclass
class ImageSet:
    """Images to evaluate with their classes; ``config`` is a run's config.yaml (None for folders)."""

    images: torch.Tensor
    class_ids: list[int]
    seeds: list[int]
    label: str
    files: list[str] | None = None
    class_names: list[str] | None = None
    config: DictConfig | None = None
    skipped: int = 0


def load_run(run_dir: str | Path, label: str = "prototype") -> ImageSet:
    """Prototypes of a ``protoscope-generate`` run folder (hybrid rows skipped, with a log note)."""
    run_dir = Path(run_dir).expanduser()
    file = run_dir / "prototypes.pt"
    if not file.is_file():
        raise ConfigError(f"{run_dir} has no prototypes.pt: set run_dir to a protoscope-generate run folder "
                          "(outputs/generate/<time>), or use images=<folder> for other images")
    data = read_prototypes(file)
    cfg_file = run_dir / "config.yaml"
    config = OmegaConf.load(cfg_file) if cfg_file.is_file() else None
    keep = [i for i, c in enumerate(data["class_indices"]) if not isinstance(c, (list, tuple))]
    skipped = len(data["class_indices"]) - len(keep)
    if skipped:
        log.info("%s: skipping %d hybrid prototype(s) (several target classes have no single class-mean path)",
                 run_dir, skipped)
    if not keep:
        raise ConfigError(f"{run_dir}: every prototype is a hybrid; path evaluation needs single-class prototypes")
    names = list(data.get("class_names") or [])
    return ImageSet(
        images=data["images"][keep].float(),
        class_ids=[int(data["class_indices"][i]) for i in keep],
        seeds=[int(data["seeds"][i]) for i in keep],
        label=label,
        files=None,
        class_names=[names[i] for i in keep] if names else None,
        config=config,
        skipped=skipped,
    )


PROTOTYPE_KEYS = ("images", "class_indices", "class_names", "seeds")


def read_prototypes(file: Path) -> dict[str, Any]:
    """A ``prototypes.pt`` written by protoscope-generate; a ConfigError saying what is wrong otherwise."""
    fix = "give the folder of a complete protoscope-generate run, or regenerate it"
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, random bytes, pickled code
        reason = "holds pickled objects that are not tensors (refused: weights_only=True)" \
            if "Unsupported global" in str(exc) else \
            f"is not a readable torch file, truncated or corrupt ({type(exc).__name__})"
        raise ConfigError(f"{file} {reason}: {fix}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file} holds a {type(data).__name__}, not protoscope's prototype record: {fix}")
    if "target_kind" in data and "class_indices" not in data:
        raise ConfigError(f"{file} holds prototypes of {data['target_kind']} targets: path similarity compares class "
                          "prototypes with natural images of their class; evaluate a run of a class objective")
    missing = [k for k in PROTOTYPE_KEYS if k not in data]
    if missing:
        raise ConfigError(f"{file} lacks {', '.join(missing)} (has {', '.join(map(str, data)) or 'nothing'}): "
                          f"not written by protoscope-generate; {fix}")
    images = data["images"]
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"{file}: images must be a float tensor [R,C,H,W], got {shape}; {fix}")
    lengths = {k: len(data[k]) for k in PROTOTYPE_KEYS[1:]}
    if any(n != len(images) for n in lengths.values()):
        raise ConfigError(f"{file}: {len(images)} images but {lengths}; {fix}")
    return data


def check_inputs(cfg: DictConfig) -> None:
    """A run's prototypes.pt is sound (the folders themselves: :func:`protoscope.validation.check_evaluate_folders`)."""
    for key in ("run_dir", "baseline_run"):
        if cfg.get(key):
            folder = Path(str(cfg.get(key))).expanduser()
            if not (folder / "prototypes.pt").is_file():
                raise ConfigError(f"{key}={folder} has no prototypes.pt: set it to a protoscope-generate run folder "
                                  "(outputs/generate/<time>), or use images=<folder> for other images")
            read_prototypes(folder / "prototypes.pt")


def check_run_classes(images: ImageSet, classifier: Classifier) -> None:
    """A run's class names must be the classifier's names for the same indices."""
    for c, name in zip(images.class_ids, images.class_names or []):
        if not 0 <= c < classifier.num_classes or classifier.class_names[c] != name:
            have = classifier.class_names[c] if 0 <= c < classifier.num_classes else "no such class"
            raise ConfigError(
                f"{images.label}: the run's class {c} is {name!r} but model {classifier.name} has {have!r} there; "
                "evaluate with the model the run was generated with (leave model= unset to use its config.yaml)"
            )


def _resolve_class(value: Any, classifier: Classifier, where: str) -> int:
    label = str(value).strip()
    index = match_class(label, classifier.class_names)
    if index is None:
        near = close_names(label, classifier.class_names)
        hint = f" Close class names: {near}." if near else ""
        raise ConfigError(f"{where}: class {label!r} matches no class of model {classifier.name}.{hint} Use one of "
                          f"its {classifier.num_classes} class names or an index 0..{classifier.num_classes - 1}.")
    return index


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _read_mapping(file: Path) -> list[tuple[str, Any]]:
    if not file.is_file():
        raise ConfigError(f"mapping file {file} does not exist")
    if file.suffix.lower() == ".json":
        data = json.loads(file.read_text())
        if not isinstance(data, dict):
            raise ConfigError(f"mapping file {file}: expected a JSON object {{\"filename\": class}}")
        return [(str(k), v) for k, v in data.items()]
    if file.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(file.read_text().splitlines()) if r and any(x.strip() for x in r)]
        if rows and rows[0][0].strip().lower() in _HEADER:
            rows = rows[1:]
        bad = [r for r in rows if len(r) < 2]
        if bad:
            raise ConfigError(f"mapping file {file}: every row needs 'filename,class', got {bad[0]}")
        return [(r[0].strip(), r[1].strip()) for r in rows]
    raise ConfigError(f"mapping file {file}: use a .csv (filename,class) or .json ({{filename: class}}) file")


def _entries(folder: Path, mapping: Any, classifier: Classifier) -> list[tuple[int, Path]]:
    """(class, file) pairs, sorted by class order of appearance then file name."""
    if mapping is None:
        subs = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
        if not subs:
            raise ConfigError(f"{folder} has no class sub-folders: put images in {folder}/<class>/ or give "
                              "mapping=<file.csv|file.json> (filename -> class)")
        loose = [p.name for p in folder.iterdir() if _is_image(p)]
        if loose:
            log.warning("%s: %d image(s) outside class sub-folders are ignored (e.g. %s)", folder, len(loose), loose[0])
        out = []
        for sub in subs:
            c = _resolve_class(sub.name, classifier, f"folder {sub}")
            out.extend((c, f) for f in sorted(sub.rglob("*")) if _is_image(f))
        return out
    items = (list(mapping.items()) if isinstance(mapping, Mapping)
             else _read_mapping(Path(mapping).expanduser()))
    out = []
    for name, value in items:
        path = Path(name) if Path(name).is_absolute() else folder / name
        if not path.is_file():
            raise ConfigError(f"mapping names {name!r}, but {path} does not exist")
        out.append((_resolve_class(value, classifier, f"mapping entry {name!r}"), path))
    return out


def load_image(path: Path, classifier: Classifier, resize: bool = False) -> torch.Tensor:
    """One image as ``[C, size, size]`` float in [0,1]; a ConfigError if it does not fit the model."""
    try:
        arr = read_image(path)
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a broken file
        from ..validation import unreadable_image_error

        raise unreadable_image_error(path, exc) from None
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    if channels == 3 and classifier.channels == 1 and np.array_equal(arr[..., 0], arr[..., 1]) \
            and np.array_equal(arr[..., 0], arr[..., 2]):
        arr, channels = arr[..., 0], 1  # grey stored as RGB: lossless
    size = classifier.input_size
    if not resize and ((h, w) != (size, size) or channels != classifier.channels):
        raise ConfigError(
            f"image {path} is {w}x{h} with {channels} channel(s), but model {classifier.name} takes "
            f"{size}x{size} with {classifier.channels}; give images of that size, or set resize=true to resize "
            "(shorter side), centre-crop and convert channels"
        )
    return prepare(arr, size, classifier.channels)


def load_image_folder(folder: str | Path, mapping: str | Path | Mapping[str, Any] | None, classifier: Classifier,
                      resize: bool = False, label: str | None = None) -> ImageSet:
    """Images of ``folder`` with classes from sub-folders or a mapping file (see the module doc)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"images folder {folder} does not exist")
    entries = _entries(folder, mapping, classifier)
    if not entries:
        raise ConfigError(f"{folder}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
    order = list(dict.fromkeys(c for c, _ in entries))
    entries.sort(key=lambda e: (order.index(e[0]), str(e[1])))
    seeds, count = [], {}
    for c, f in entries:
        m = _SEED.search(f.stem)
        seeds.append(int(m.group(1)) if m else count.get(c, 0))
        count[c] = count.get(c, 0) + 1
    images = torch.stack([load_image(f, classifier, resize) for _, f in entries])
    files = [str(f.relative_to(folder)) if f.is_relative_to(folder) else str(f) for _, f in entries]
    return ImageSet(images=images, class_ids=[c for c, _ in entries], seeds=seeds,
                    label=label or folder.name, files=files)
