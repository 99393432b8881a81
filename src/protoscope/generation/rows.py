"""Rows of a prototype batch: a row is (target, seed). A target is a class group (class objectives) or a
feature inside the network (a channel, a neuron, a direction, a layer's energy); the seed gives the row its
reproducible random stream."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from collections.abc import Sequence as SequenceABC
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from ..models.class_names import close_names, match_class

#: The kind of a class-group target; every other kind names a feature (``channel``, ``neuron``, ...).
CLASS = "class"


@dataclass(frozen=True)
class Target:
    """What a row optimises: ``kind`` (``class`` or a feature kind), ``ids`` (the class indices of a class
    group; the one feature index otherwise), ``name`` (class names ``a+b``, or e.g. ``channel 7 of stage2``)."""

    kind: str
    ids: tuple[int, ...]
    name: str

    @property
    def is_class(self) -> bool:
        return self.kind == CLASS

    @property
    def key(self) -> str:
        """Identifies the target in seeds: ``0+1`` for classes (as before targets had kinds), ``channel7``."""
        return "+".join(map(str, self.ids)) if self.is_class else f"{self.kind}{self.ids[0]}"


@dataclass(frozen=True)
class Row:
    """One prototype: a target and a seed (the seed's index among the target's seeds)."""

    target: Target
    seed: int

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def key(self) -> str:
        return self.target.key

    @property
    def classes(self) -> tuple[int, ...]:
        """The target classes of a class row; () for a feature row."""
        return self.target.ids if self.target.is_class else ()

    @property
    def class_index(self) -> int | str:
        return self.classes[0] if len(self.classes) == 1 else self.key

    def describe(self) -> str:
        """The target in words: ``class 3 'cat'``, ``channel 7 of stage2``."""
        return f"class {self.class_index} {self.name!r}" if self.target.is_class else self.name

    def stream_seed(self, base_seed: int, stream: str) -> int:
        """A seed that depends only on (base seed, target, seed, stream name)."""
        digest = hashlib.sha256(f"{base_seed}:{self.key}:{self.seed}:{stream}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & (2**63 - 1)

    def generator(self, base_seed: int, stream: str) -> torch.Generator:
        """A CPU generator seeded by :meth:`stream_seed`."""
        return torch.Generator().manual_seed(self.stream_seed(base_seed, stream))


def class_row(classes: Sequence[int], name: str, seed: int) -> Row:
    """A row targeting a class group."""
    return Row(Target(CLASS, tuple(int(c) for c in classes), name), int(seed))


def resolve_class(item: Any, class_names: Sequence[str]) -> int:
    """A class index or name -> index, with a clear error naming close matches."""
    n = len(class_names)
    if isinstance(item, bool):
        raise ConfigError(f"class {item!r} is not an index or a name")
    label = str(item).strip()
    if isinstance(item, int) or re.fullmatch(r"-?\d+", label):
        idx = int(label)
        if not 0 <= idx < n:
            raise ConfigError(f"class index {idx} is out of range: this model has {n} classes (0..{n - 1})")
        return idx
    index = match_class(label, class_names, allow_index=False)
    if index is not None:
        return index
    close = close_names(label, class_names)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    if n <= 30:  # a small model: its whole class list is the most useful hint
        listed = ", ".join(class_names)
        raise ConfigError(f"class {label!r} is not a class of this model.{hint} Its {n} classes: {listed}; "
                          f"give some of them (names or indices 0..{n - 1}) or classes=all")
    raise ConfigError(
        f"class {label!r} is not a class of this model ({n} classes).{hint} "
        f"Give classes as indices (0..{n - 1}) or exact names, e.g. classes='[0, {class_names[0]}]', or classes=all."
    )


def resolve_rows(classes: Any, class_names: Sequence[str], seeds_per_class: int = 1) -> list[Row]:
    """Expand the ``classes`` setting (indices, names, ``a+b`` hybrids, or ``all``) into rows."""
    if seeds_per_class < 1:
        raise ConfigError(f"seeds_per_class must be >= 1, got {seeds_per_class}")
    if classes is None or (isinstance(classes, str) and classes == "all"):
        groups: list[Any] = list(range(len(class_names)))
    elif isinstance(classes, (str, int)):
        groups = [classes]
    else:
        groups = list(classes)
    if not groups:
        raise ConfigError("classes is empty: give at least one class index or name, or 'all'")
    rows = []
    for group in groups:
        if isinstance(group, str):
            members: list[Any] = group.split("+") if "+" in group else [group]
        elif isinstance(group, SequenceABC):
            members = list(group)
        else:
            members = [group]
        idx = tuple(resolve_class(m, class_names) for m in members)
        name = "+".join(class_names[i] for i in idx)
        rows.extend(class_row(idx, name, s) for s in range(seeds_per_class))
    return rows


def target_weights(rows: Sequence[Row], num_classes: int) -> torch.Tensor:
    """[R, K] weights: each row's target classes share weight 1."""
    w = torch.zeros(len(rows), num_classes)
    for r, row in enumerate(rows):
        w[r, list(row.classes)] = 1.0 / len(row.classes)
    return w


def row_targets(rows: Sequence[Row], num_classes: int) -> torch.Tensor:
    """What the step's terms read as ``ctx.targets``: class weights ``[R, K]`` (:func:`target_weights`) for
    class rows, each row's feature index ``[R, 1]`` (int64) for feature rows."""
    if all(row.target.is_class for row in rows):
        return target_weights(rows, num_classes)
    if any(row.target.is_class for row in rows):
        raise ValueError("rows mix class and feature targets")
    return torch.tensor([[row.target.ids[0]] for row in rows], dtype=torch.long).reshape(len(rows), 1)
