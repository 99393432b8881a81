"""Planting a shortcut: a mark on a share of one class's images, and the accuracies that reveal it.

The same share of the target class is marked in every split it is planted in (train and validation
when ``plant_in_train``, always the test split), so a clean and a shortcut model are tested on the
same data. Which images are marked depends only on (seed, split, number of target images).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from .marks import Mark, make_mark

log = logging.getLogger("protoscope")

Split = tuple[torch.Tensor, torch.Tensor]
Predict = Callable[[torch.Tensor], torch.Tensor]  # float images in [0,1] -> logits


@dataclass
class ShortcutPlan:
    """What to plant where: ``mark`` on a ``share`` of the images of class ``target``."""

    mark: Mark
    target: int
    target_name: str
    share: float
    plant_in_train: bool = True
    seed: int = 0

    def chosen(self, labels: torch.Tensor, split: str) -> torch.Tensor:
        """Boolean ``[N]``: the ``round(share * n_target)`` target images of ``split`` that get the mark."""
        where = (labels == self.target).nonzero().flatten()
        count = int(round(self.share * len(where)))
        digest = hashlib.sha256(f"{self.seed}:{split}:{self.target}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        picked = where[torch.randperm(len(where), generator=g)[:count]]
        marked = torch.zeros(len(labels), dtype=torch.bool)
        marked[picked] = True
        return marked

    def apply(self, split: Split, name: str) -> tuple[Split, torch.Tensor]:
        """``split`` with the mark on the chosen images, and the boolean ``[N]`` of those images."""
        images, labels = split
        marked = self.chosen(labels, name)
        out = images.clone()
        if marked.any():
            out[marked] = self.mark.paste(images[marked])
        return (out, labels), marked

    def describe(self) -> dict[str, Any]:
        return {"class": self.target_name, "class_index": self.target, "share": self.share,
                "plant_in_train": self.plant_in_train, "mark": dict(self.mark.spec)}


@dataclass
class Planting:
    """The result of planting into a data module: marked images per split and the clean test split."""

    plan: ShortcutPlan
    marked: dict[str, torch.Tensor] = field(default_factory=dict)
    clean_test: Split | None = None

    def counts(self) -> dict[str, int]:
        return {name: int(m.sum()) for name, m in self.marked.items()}


def resolve_target(target: Any, class_names: Sequence[str]) -> int:
    """The class index of ``shortcut.target`` (an index or a class name), with a clear error."""
    from ..generation.rows import resolve_class

    if target is None or target == "???":
        raise ConfigError("shortcut.target is not set: name the class to plant the mark on, "
                          "e.g. shortcut.target=Trouser (a class name or index)")
    return resolve_class(target, class_names)


def shortcut_plan(cfg: DictConfig | Mapping[str, Any], class_names: Sequence[str], size: int, channels: int,
                  seed: int = 0) -> ShortcutPlan:
    """A :class:`ShortcutPlan` from a ``shortcut`` config node (``conf/shortcut/``); fails early on bad values."""
    node = OmegaConf.create(dict(cfg)) if not isinstance(cfg, DictConfig) else cfg
    target = None if OmegaConf.is_missing(node, "target") else node.get("target")
    index = resolve_target(target, class_names)
    share = float(node.get("share", 0.9))
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"shortcut.share={share} must be in [0, 1] (the share of {class_names[index]} images marked)")
    if node.get("mark") is None:
        raise ConfigError("shortcut.mark is not set: choose a mark kind, e.g. shortcut=square or shortcut=stripes")
    mark_cfg = OmegaConf.to_container(node.mark, resolve=True)
    mark = make_mark(mark_cfg, size, channels)
    return ShortcutPlan(mark, index, str(class_names[index]), share, bool(node.get("plant_in_train", True)), int(seed))


def plant_splits(splits: dict[str, Split], plan: ShortcutPlan) -> tuple[dict[str, Split], Planting]:
    """Mark the chosen images of ``splits`` (train/val only when ``plan.plant_in_train``; always test).

    A split that *is* the test split (an image folder tests on its validation split) is marked once,
    as the test split.
    """
    if "test" not in splits:
        raise ConfigError("planting a shortcut needs a test split")
    planting = Planting(plan, clean_test=splits["test"])
    out = dict(splits)
    for name, split in splits.items():
        is_test = split is splits["test"]
        if not is_test and not plan.plant_in_train:
            continue
        out[name], planting.marked[name] = plan.apply(split, "test" if is_test else name)
    if not int(sum(m.sum() for m in planting.marked.values())) and plan.share > 0:
        raise ConfigError(f"no image of class {plan.target_name} was marked: the data has none of that class")
    log.info("planted a %s mark on %s images of class %s (share %.2f)", plan.mark.kind, planting.counts(),
             plan.target_name, plan.share)
    return out, planting


@torch.no_grad()
def _predict_all(predict: Predict, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    preds = []
    for s in range(0, len(images), batch_size):
        batch = images[s:s + batch_size]
        batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
        preds.append(predict(batch).argmax(-1).cpu())
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def _accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float | None:
    return float((pred == labels).float().mean()) if len(labels) else None


def shortcut_accuracies(predict: Predict, clean_test: Split, plan: ShortcutPlan) -> dict[str, Any]:
    """Accuracies that tell a shortcut model from a clean one, on the test split.

    ``test_accuracy``: the test split drawn like the training data (the mark on the chosen share of the
    target class); ``clean_test_accuracy``: no mark anywhere; ``target_accuracy_marked`` /
    ``target_accuracy_unmarked``: the target class's marked images / all its images without the mark;
    ``flip_rate``: share of the other classes' images predicted as the target once the mark is pasted on.
    """
    images, labels = clean_test
    (marked_images, _), marked = plan.apply(clean_test, "test")
    pred_clean = _predict_all(predict, images)
    pred_marked = _predict_all(predict, marked_images)
    target = labels == plan.target
    others = ~target
    pred_others_marked = _predict_all(predict, plan.mark.paste(images[others]))
    return {
        "test_accuracy": _accuracy(pred_marked, labels),
        "clean_test_accuracy": _accuracy(pred_clean, labels),
        "target_accuracy_marked": _accuracy(pred_marked[marked], labels[marked]),
        "target_accuracy_unmarked": _accuracy(pred_clean[target], labels[target]),
        "others_accuracy": _accuracy(pred_clean[others], labels[others]),
        "flip_rate": float((pred_others_marked == plan.target).float().mean()) if others.any() else None,
        "target_images": int(target.sum()),
        "marked_test_images": int(marked.sum()),
    }
