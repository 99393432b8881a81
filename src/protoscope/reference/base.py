"""The interface every natural-image source implements, and class-name matching."""

from __future__ import annotations

import hashlib
import json
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from ..models.class_names import close_names, match_class, normalise_name  # noqa: F401 (re-exported)
from ..errors import ConfigError
from ..models.classifier import Classifier

Plan = list[tuple[int, Any]]
SPLIT_PARTS = ("val", "test")


@dataclass(frozen=True)
class Split:
    """A seeded, disjoint split of every class's items into a validation and a test part.

    Per class, the items (in the source's stable order) are shuffled by a generator seeded with
    ``(seed, class)``; the first ``round(fraction * n)`` are ``val``, the rest ``test``. The same seed
    always gives the same parts, and the two parts never share an item. Select recipes on ``val``,
    report on ``test``.
    """

    part: str
    fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.part not in SPLIT_PARTS:
            raise ConfigError(f"reference.part must be one of {SPLIT_PARTS} (or null), got {self.part!r}")
        if not 0.0 < self.fraction < 1.0:
            raise ConfigError(f"reference.part_fraction must be in (0, 1), got {self.fraction}")

    def part_of(self, items: list[Any], class_index: int) -> list[Any]:
        order = list(range(len(items)))
        random.Random(f"split:{self.seed}:{class_index}").shuffle(order)
        cut = int(round(self.fraction * len(items)))
        chosen = sorted(order[:cut] if self.part == "val" else order[cut:])
        return [items[i] for i in chosen]

    def key(self) -> dict[str, Any]:
        return {"part": self.part, "fraction": self.fraction, "seed": self.seed}


class ReferenceSource(ABC):
    """Natural images of a classifier's classes.

    A source first lists candidate items per class (:meth:`candidates`, cheap: no decoding), then
    decodes one item at a time (:meth:`load`). :meth:`plan` picks at most ``max_per_class`` items
    per class with a seeded random choice, so big folders are subsampled reproducibly.
    """

    name: str = "source"

    @abstractmethod
    def candidates(self, classifier: Classifier, classes: set[int] | None, seed: int = 0) -> dict[int, list[Any]]:
        """Items per class index of ``classifier`` (only ``classes`` when given), in a stable order.

        ``seed`` is for sources that synthesise views (random crops); others ignore it.
        """

    @abstractmethod
    def load(self, item: Any, classifier: Classifier) -> torch.Tensor:
        """One item as ``[classifier.channels, input_size, input_size]`` float32 in [0,1]."""

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """The options that change which images come out (part of :meth:`fingerprint`)."""

    def data_identity(self) -> Any:
        """What identifies the underlying data: file list with sizes and mtimes, or package versions."""
        return None

    def fingerprint(self) -> str:
        """A string that changes whenever the source's name, data or options change."""
        return json.dumps(
            {"source": self.name, "options": self.options(), "data": self.data_identity()},
            sort_keys=True, default=str,
        )

    def empty_hint(self, class_index: int, classifier: Classifier) -> str:
        """How to supply images of a class this source has none of."""
        return "add images of this class to the reference source, or drop the class"

    def plan(self, classifier: Classifier, classes: Sequence[int] | None = None,
             max_per_class: int | None = None, seed: int = 0, split: "Split | None" = None) -> Plan:
        """``(class, item)`` pairs to load: per class in class order, the ``split`` part (if any), then a
        seeded subset if over the limit."""
        wanted = None if classes is None else set(int(c) for c in classes)
        found = self.candidates(classifier, wanted, seed)
        out: Plan = []
        for c in sorted(found):
            items = list(found[c])
            if split is not None:
                items = split.part_of(items, c)
            if max_per_class is not None and len(items) > max_per_class:
                keep = sorted(random.Random(f"{seed}:{c}").sample(range(len(items)), max_per_class))
                items = [items[i] for i in keep]
            out.extend((c, it) for it in items)
        return out

    def samples(self, classifier: Classifier, classes: Sequence[int] | None = None,
                max_per_class: int | None = None, seed: int = 0,
                split: "Split | None" = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(class_index, image [C,H,W] float in [0,1])`` for the planned items."""
        for c, item in self.plan(classifier, classes, max_per_class, seed, split):
            yield c, self.load(item, classifier)


def digest(obj: Any) -> str:
    """SHA-256 of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
