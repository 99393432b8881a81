"""Rows of a prototype batch: which classes each row targets and its reproducible random stream."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from collections.abc import Sequence as SequenceABC
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from ..models.class_names import close_names, match_class


@dataclass(frozen=True)
class Row:
    """One prototype: a target class group and a seed."""

    classes: tuple[int, ...]
    name: str
    seed: int

    @property
    def key(self) -> str:
        return "+".join(map(str, self.classes))

    @property
    def class_index(self) -> int | str:
        return self.classes[0] if len(self.classes) == 1 else self.key

    def stream_seed(self, base_seed: int, stream: str) -> int:
        """A seed that depends only on (base seed, target classes, seed, stream name)."""
        digest = hashlib.sha256(f"{base_seed}:{self.key}:{self.seed}:{stream}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & (2**63 - 1)

    def generator(self, base_seed: int, stream: str) -> torch.Generator:
        """A CPU generator seeded by :meth:`stream_seed`."""
        return torch.Generator().manual_seed(self.stream_seed(base_seed, stream))


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
        rows.extend(Row(idx, name, s) for s in range(seeds_per_class))
    return rows


def target_weights(rows: Sequence[Row], num_classes: int) -> torch.Tensor:
    """[R, K] weights: each row's target classes share weight 1."""
    w = torch.zeros(len(rows), num_classes)
    for r, row in enumerate(rows):
        w[r, list(row.classes)] = 1.0 / len(row.classes)
    return w
