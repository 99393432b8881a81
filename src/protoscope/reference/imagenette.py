"""Imagenette (fast.ai's 10-class ImageNet subset) as a reference source, on ``torchvision.datasets.Imagenette``.

The val split's photos are ILSVRC-2012 images of ten ImageNet classes; each wnid maps to its ImageNet-1k
class index (the position in ``imagenet_wnids.txt``), so any 1000-class ImageNet model can use them.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, ReferenceDataError
from ..models.classifier import Classifier
from ..paths import data_dir as default_data_dir
from .folder import _WNID, IMAGE_EXTENSIONS, ImageFolderSource, imagenet_wnids

ROOT_ENV = "PROTOSCOPE_IMAGENETTE_ROOT"
# torchvision's archive folder per size (the stem of each archive it downloads).
SIZE_FOLDERS = {"full": "imagenette2", "320px": "imagenette2-320", "160px": "imagenette2-160"}
WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
         "n03394916", "n03417042", "n03425413", "n03445777", "n03888257")


class ImagenetteSource(ImageFolderSource):
    """The Imagenette val split: ``root`` (or ``$PROTOSCOPE_IMAGENETTE_ROOT``) is an existing copy, else
    torchvision downloads the ``size`` archive into ``<data_dir>/imagenette`` on first use.

    ``root`` may be any of: torchvision's download folder (``root/imagenette2-320/val/<wnid>/``), an
    extracted archive (``root/val/<wnid>/``), its val folder (``root/<wnid>/``), or a folder of class
    folders with a ``classes.csv`` whose ``wnid`` and ``class_name`` columns name each folder's synset.
    """

    name = "imagenette"

    def __init__(self, root: str | os.PathLike | None = None, size: str = "320px", download: bool = True,
                 data_dir: str | os.PathLike | None = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        if size not in SIZE_FOLDERS:
            raise ConfigError(f"imagenette: reference.size={size!r}; use one of {sorted(SIZE_FOLDERS)}")
        given = root or os.environ.get(ROOT_ENV) or None
        self.given = given is not None
        self.size, self.download = size, bool(download)
        base = Path(given) if given else Path(data_dir or default_data_dir()) / "imagenette"
        super().__init__(base, extensions)
        self._folders: dict[str, Path] | None = None

    # ------------------------------------------------------------------------------- finding the copy

    def wnid_folders(self) -> dict[str, Path]:
        """wnid -> folder of its val photos (downloading first when no copy exists and that is allowed)."""
        if self._folders is None:
            self._folders = self._find() or self._fetch()
        return self._folders

    def _find(self) -> dict[str, Path] | None:
        """The val folders under ``self.root`` in any accepted layout, or None when there is no copy."""
        if not self.root.is_dir():
            return None
        sizes = [self.size, *(s for s in SIZE_FOLDERS if s != self.size)]
        for candidate in [self.root / SIZE_FOLDERS[s] / "val" for s in sizes] + [self.root / "val", self.root]:
            found = _wnid_subfolders(candidate)
            if found:
                return found
        return _csv_folders(self.root)

    def _fetch(self) -> dict[str, Path]:
        """Download (and extract) the archive with torchvision, or fail in one line naming the fixes."""
        fixes = (f"point reference.root= (or ${ROOT_ENV}) at an Imagenette copy (imagenette2*/val/<wnid>/, "
                 "val/<wnid>/, <wnid>/ or class folders with classes.csv)")
        if self.given:
            raise ReferenceDataError(f"imagenette: {self.root} holds no Imagenette val photos: {fixes}")
        url = _archive_url(self.size)
        if not self.download:
            raise ReferenceDataError(f"imagenette: no copy in {self.root} and reference.download=false: {fixes}, "
                                     f"or set reference.download=true to fetch {url}")
        from torchvision.datasets import Imagenette

        try:
            Imagenette(str(self.root), split="val", size=self.size, download=True)
        except Exception as exc:  # network errors come as URLError, OSError, RuntimeError...
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise ReferenceDataError(f"imagenette: could not download {url} into {self.root} ({reason}): {fixes}, "
                                     "or extract that archive there yourself (paths.data_dir, $PROTOSCOPE_DATA)") from None
        found = self._find()
        if not found:
            raise ReferenceDataError(f"imagenette: {self.root} holds no val photos after the download: {fixes}")
        return found

    # ------------------------------------------------------------------------------- the source interface

    def options(self) -> dict[str, Any]:
        folders = self.wnid_folders()
        return {"root": str(self.root.resolve()), "extensions": list(self.extensions), "split": "val",
                "folders": {w: str(p.resolve().relative_to(self.root.resolve())) for w, p in sorted(folders.items())}}

    def class_folders(self) -> list[Path]:
        return [p for _, p in sorted(self.wnid_folders().items())]

    def candidates(self, classifier: Classifier, classes: set[int] | None, seed: int = 0) -> dict[int, list[Any]]:
        if classifier.num_classes != 1000:
            raise ConfigError(
                f"{self.name}: model {classifier.name} has {classifier.num_classes} classes, ImageNet has 1000. "
                "Use reference=image_folder with folders named after the model's classes."
            )
        index = class_indices(self.wnid_folders())
        return {c: self.files(self.wnid_folders()[w]) for w, c in sorted(index.items(), key=lambda kv: kv[1])
                if classes is None or c in classes}

    def empty_hint(self, class_index: int, classifier: Classifier) -> str:
        return (f"Imagenette has only 10 ImageNet classes ({', '.join(classifier.class_names[i] for i in imagenette_classes())}): "
                "drop the class, or use reference=imagenet_val with the full ImageNet validation set")


def imagenette_classes() -> list[int]:
    """The ImageNet-1k class indices of Imagenette's ten wnids."""
    return sorted(class_indices({w: Path(w) for w in WNIDS}).values())


def class_indices(folders: dict[str, Path]) -> dict[str, int]:
    """wnid -> ImageNet-1k class index (a ReferenceDataError for a wnid that is no ILSVRC-2012 synset)."""
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    unknown = sorted(w for w in folders if w not in index)
    if unknown:
        raise ReferenceDataError(f"imagenette: {unknown[:5]} are not ILSVRC-2012 synsets; remove those folders")
    return {w: index[w] for w in folders}


def _wnid_subfolders(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.name: p for p in folder.iterdir() if p.is_dir() and _WNID.fullmatch(p.name)}


def _csv_folders(root: Path) -> dict[str, Path] | None:
    """Class folders named in ``root/classes.csv`` (columns ``wnid`` and ``class_name``), by wnid."""
    table = root / "classes.csv"
    if not table.is_file():
        return None
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"wnid", "class_name"} <= set(rows[0]):
        raise ReferenceDataError(f"imagenette: {table} needs the columns wnid and class_name (one row per folder)")
    out = {r["wnid"].strip(): root / r["class_name"].strip() for r in rows}
    missing = [str(p) for p in out.values() if not p.is_dir()]
    if missing:
        raise ReferenceDataError(f"imagenette: {table} names folders that do not exist: {missing[:3]}")
    return out


def _archive_url(size: str) -> str:
    from torchvision.datasets import Imagenette

    return Imagenette._ARCHIVES[size][0]
