"""Image folders: ``root/<class>/*.jpg`` and the ImageNet validation layout ``root/<wnid>/*.JPEG``."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import ConfigError, ReferenceDataError
from ..models.classifier import Classifier
from .base import ReferenceSource, close_names, digest, match_class
from .preprocess import prepare, read_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_WNID = re.compile(r"n\d{8}")


class ImageFolderSource(ReferenceSource):
    """``root/<class>/**/<image>``: each sub-folder is a class name or an integer class index.

    Folder names match the classifier's class names exactly, then ignoring case, spaces, ``_``,
    ``-`` and ``/`` (so ``ankle_boot`` is "Ankle boot"), then as an integer index. A folder that
    matches no class is a :class:`ConfigError`.
    """

    name = "image_folder"

    def __init__(self, root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        self.root = Path(root).expanduser()
        self.extensions = tuple(sorted({e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}))

    def options(self) -> dict[str, Any]:
        return {"root": str(self.root.resolve()), "extensions": list(self.extensions)}

    def class_folders(self) -> list[Path]:
        """The class sub-folders of ``root``, sorted by name (hidden folders skipped)."""
        if not self.root.is_dir():
            raise ReferenceDataError(
                f"{self.name}: reference folder {self.root} does not exist. Set reference.root to a folder "
                "holding one sub-folder of images per class."
            )
        return sorted((p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.name)

    def files(self, folder: Path) -> list[Path]:
        """Image files under ``folder`` (recursively), sorted by relative path."""
        out = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out.extend(Path(dirpath) / f for f in filenames
                       if not f.startswith(".") and os.path.splitext(f)[1].lower() in self.extensions)
        return sorted(out)

    def data_identity(self) -> Any:
        """Digest of every image file's relative path, size and mtime, and the file count."""
        rows = []
        for folder in self.class_folders():
            for f in self.files(folder):
                st = f.stat()
                rows.append((str(f.relative_to(self.root)), st.st_size, st.st_mtime_ns))
        return {"files": digest(rows), "count": len(rows)}

    def folder_class(self, folder: Path, classifier: Classifier) -> int:
        """The class index a sub-folder stands for (ConfigError with close names if none)."""
        index = match_class(folder.name, classifier.class_names)
        if index is None:
            near = close_names(folder.name, classifier.class_names)
            hint = f" Close class names: {near}." if near else ""
            raise ConfigError(
                f"{self.name}: folder {folder} matches no class of model {classifier.name}.{hint} Rename it to "
                f"one of the model's {classifier.num_classes} class names or to its integer index "
                f"(0..{classifier.num_classes - 1}), or move it out of {self.root}."
            )
        return index

    def candidates(self, classifier: Classifier, classes: set[int] | None, seed: int = 0) -> dict[int, list[Any]]:
        out: dict[int, list[Any]] = {}
        owner: dict[int, Path] = {}
        for folder in self.class_folders():
            c = self.folder_class(folder, classifier)
            if c in owner:
                raise ConfigError(
                    f"{self.name}: folders {owner[c].name!r} and {folder.name!r} both mean class {c} "
                    f"({classifier.class_names[c]!r}); merge them into one folder."
                )
            owner[c] = folder
            if classes is None or c in classes:
                out[c] = self.files(folder)
        return out

    def load(self, item: Any, classifier: Classifier) -> torch.Tensor:
        return prepare(read_image(item), classifier.input_size, classifier.channels)

    def empty_hint(self, class_index: int, classifier: Classifier) -> str:
        name = classifier.class_names[class_index]
        return (f"put images in {self.root}/<folder>/ with <folder> = {name!r} or {class_index} "
                f"(extensions {', '.join(self.extensions)}), or drop the class")


WNIDS_FILE = Path(__file__).with_name("imagenet_wnids.txt")


@lru_cache(maxsize=None)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 synset ids in class-index order (sorted; shipped with protoscope)."""
    wnids = tuple(WNIDS_FILE.read_text().split())
    if len(wnids) != 1000 or list(wnids) != sorted(wnids):
        raise ReferenceDataError(f"{WNIDS_FILE} is damaged: expected 1000 sorted wnids, found {len(wnids)}")
    return wnids


class ImageNetValSource(ImageFolderSource):
    """The ImageNet-1k validation layout ``root/<wnid>/*.JPEG``, any subset of the 1000 synset folders.

    Class index = position of the wnid in the ILSVRC-2012 list (``imagenet_wnids.txt``, the sorted
    wnids, torchvision's order), so a folder holding only some synsets keeps the right indices.
    """

    name = "imagenet_val"

    def wnid_folders(self) -> dict[int, Path]:
        """Class index -> synset folder; a clear error for folders that are no ILSVRC-2012 synset."""
        index = {w: i for i, w in enumerate(imagenet_wnids())}
        folders = [p for p in self.class_folders() if _WNID.fullmatch(p.name)]
        unknown = [p.name for p in folders if p.name not in index]
        if unknown:
            raise ReferenceDataError(
                f"{self.name}: {self.root} has folders {unknown[:5]} that are not ILSVRC-2012 synsets; "
                "remove them, or use reference=image_folder with folders named by class"
            )
        if not folders:
            raise ReferenceDataError(
                f"{self.name}: {self.root} holds no synset folders (n########). Use the ImageNet-1k "
                "validation set sorted into one folder per wnid (any subset of them), or "
                "reference=image_folder for folders named by class."
            )
        return {index[p.name]: p for p in folders}

    def candidates(self, classifier: Classifier, classes: set[int] | None, seed: int = 0) -> dict[int, list[Any]]:
        folders = self.wnid_folders()
        if classifier.num_classes != 1000:
            raise ConfigError(
                f"{self.name}: model {classifier.name} has {classifier.num_classes} classes, ImageNet has 1000. "
                "Use reference=image_folder with folders named after the model's classes."
            )
        return {c: self.files(f) for c, f in sorted(folders.items()) if classes is None or c in classes}

    def empty_hint(self, class_index: int, classifier: Classifier) -> str:
        wnid = imagenet_wnids()[class_index]
        return (f"add the validation images of synset {wnid} ({classifier.class_names[class_index]!r}) as "
                f"{self.root / wnid}/*.JPEG, or drop the class")
