"""Reference statistics: per-class activation paths of natural images, cached on disk."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..errors import ConfigError, ReferenceDataError
from ..io import write_torch
from ..models.classifier import Classifier
from ..metrics.image_stats import IMAGE_STATS, image_statistics
from ..models.hooks import activation_path
from ..paths import cache_dir as default_cache_dir
from .base import Plan, ReferenceSource, Split, digest

log = logging.getLogger(__name__)
ENTRY_FORMAT = 3  # one cache file per class; 3 added the image statistics and example photos
EXAMPLES_PER_CLASS = 4  # natural photos kept per class (uint8) to show next to prototypes


@dataclass
class ReferenceStats:
    """Activation paths of natural images per class (spatially averaged channel vectors per layer).

    ``paths[c][layer]`` is ``[N_c, C_layer]`` (one row per image), ``means[c][layer]`` is its mean
    over images ``[C_layer]``, ``counts[c] = N_c``. ``image_stats[c][name]`` is ``[N_c]`` (see
    :mod:`protoscope.metrics.image_stats`); ``examples[c]`` holds the first few photos as uint8
    ``[k, C, H, W]``. Path tensors are float32 on the CPU.
    """

    layer_names: list[str]
    classes: list[int]
    means: dict[int, dict[str, torch.Tensor]]
    paths: dict[int, dict[str, torch.Tensor]]
    counts: dict[int, int]
    source: str = ""
    key: str = ""
    from_cache: bool = field(default=False, compare=False)
    image_stats: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    examples: dict[int, torch.Tensor] = field(default_factory=dict)

    def mean_path(self, class_index: int) -> dict[str, torch.Tensor]:
        """The class-mean path: layer -> ``[C]``."""
        return self.means[self._check(class_index)]

    def image_paths(self, class_index: int) -> dict[str, torch.Tensor]:
        """Every reference image's own path: layer -> ``[N, C]``."""
        return self.paths[self._check(class_index)]

    def stacked_means(self, classes: Sequence[int]) -> dict[str, torch.Tensor]:
        """Class-mean paths of ``classes`` as rows: layer -> ``[len(classes), C]``."""
        for c in classes:
            self._check(c)
        return {l: torch.stack([self.means[c][l] for c in classes]) for l in self.layer_names}

    def _check(self, class_index: int) -> int:
        c = int(class_index)
        if c not in self.means:
            raise ReferenceDataError(
                f"no reference statistics for class {c}: they hold classes {self.classes}. Include the "
                "class when computing them (the classes argument) and give the source images of it."
            )
        return c


def cache_key(classifier: Classifier, fingerprint: str, max_per_class: int, seed: int,
              split: Split | None = None) -> str:
    """SHA-256 over everything that determines a class's statistics (weights, data, layers, preprocessing,
    sample size, seed, split); not the class list: entries are per class, so any subset reuses them."""
    return digest({
        "format": ENTRY_FORMAT,
        "weights": classifier.weights_digest,
        "class_names": digest(list(classifier.class_names)),
        "source": fingerprint,
        "layers": list(classifier.layer_names),
        "preprocessing": classifier.preprocessing_key(),
        "max_per_class": max_per_class,
        "seed": seed,
        **({"split": split.key()} if split is not None else {}),
    })


class _PlanDataset(Dataset):
    def __init__(self, source: ReferenceSource, plan: Plan, classifier: Classifier) -> None:
        self.source, self.plan, self.classifier = source, plan, classifier

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        c, item = self.plan[i]
        return c, self.source.load(item, self.classifier)


def compute_reference_stats(
    classifier: Classifier,
    source: ReferenceSource,
    classes: Sequence[int] | None = None,
    max_per_class: int = 50,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    seed: int = 0,
    num_workers: int = 0,
    cache: bool = True,
    cache_root: str | Path | None = None,
    progress: bool | None = None,
    split: Split | None = None,
) -> ReferenceStats:
    """Per-class activation paths of at most ``max_per_class`` images of each class from ``source``.

    ``classes=None`` takes every class the source has images of. Results are cached per class under
    ``<cache_root or cache_dir()>/reference/<key>/<class>.pt`` (the key hashes everything but the
    class list), so any subset of classes computed before is loaded, and only missing classes are
    computed (``stats.from_cache``: every class came from the cache). ``device=None`` runs where the network is; another device moves
    the network there for the computation and back afterwards. ``split`` takes only its part
    (validation or test) of every class's images.
    """
    if max_per_class < 1 or batch_size < 1:
        raise ConfigError(f"max_per_class and batch_size must be >= 1, got {max_per_class} and {batch_size}")
    wanted = None if classes is None else sorted({int(c) for c in classes})
    bad = [c for c in wanted or [] if not 0 <= c < classifier.num_classes]
    if bad:
        raise ConfigError(f"class indices {bad} are out of range: model {classifier.name} has {classifier.num_classes} classes")
    fingerprint = source.fingerprint()
    key = cache_key(classifier, fingerprint, max_per_class, seed, split)
    folder = Path(cache_root or default_cache_dir()) / "reference" / key
    classes = wanted if wanted is not None else _present_classes(classifier, source, max_per_class, seed, split)
    cached = {c: _load_entry(folder / f"{c}.pt", key, c, classifier.layer_names) for c in classes} if cache else {}
    missing = [c for c in classes if cached.get(c) is None]
    if not missing:
        log.info("reference statistics: cache hit %s (%s, %d classes)", folder, source.name, len(classes))
    elif len(missing) < len(classes):
        log.info("reference statistics: %d of %d classes from the cache %s, computing %d", len(classes) - len(missing),
                 len(classes), folder, len(missing))
    fresh = _compute(classifier, source, missing, max_per_class, batch_size, device, seed, num_workers, progress,
                     split) if missing else None
    if fresh is not None and cache:
        for c in missing:
            write_torch(folder / f"{c}.pt", _entry(fresh, c, key))
        log.info("reference statistics: computed and cached %d classes in %s", len(missing), folder)
    parts = {c: cached[c] for c in classes if cached.get(c) is not None}
    means = {c: (parts[c]["means"] if c in parts else fresh.means[c]) for c in classes}
    paths = {c: (parts[c]["paths"] if c in parts else fresh.paths[c]) for c in classes}
    counts = {c: (int(parts[c]["count"]) if c in parts else fresh.counts[c]) for c in classes}
    image_stats = {c: (parts[c]["image_stats"] if c in parts else fresh.image_stats[c]) for c in classes}
    examples = {c: (parts[c]["examples"] if c in parts else fresh.examples[c]) for c in classes}
    return ReferenceStats(layer_names=list(classifier.layer_names), classes=list(classes), means=means, paths=paths,
                          counts=counts, source=fingerprint, key=key, from_cache=not missing,
                          image_stats=image_stats, examples=examples)


def _present_classes(classifier: Classifier, source: ReferenceSource, max_per_class: int, seed: int,
                     split: Split | None) -> list[int]:
    """Every class the source has images of (a listing, no decoding)."""
    present = sorted({c for c, _ in source.plan(classifier, None, max_per_class, seed, split)})
    if not present:
        raise ReferenceDataError(
            f"{source.name}: the source holds no images of any class of model {classifier.name}. Check the "
            "reference config (root folder, labels) against the model's class names."
        )
    return present


def _entry(stats: ReferenceStats, c: int, key: str) -> dict[str, Any]:
    """One class's cache file: plain containers and tensors (``torch.load(weights_only=True)``)."""
    return {"format": ENTRY_FORMAT, "key": key, "class": int(c), "layer_names": list(stats.layer_names),
            "count": int(stats.counts[c]), "means": stats.means[c], "paths": stats.paths[c],
            "image_stats": stats.image_stats[c], "examples": stats.examples[c]}


def _load_entry(path: Path, key: str, c: int, layer_names: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(entry, dict) and entry.get("format") != ENTRY_FORMAT:
            log.info("reference statistics cache file %s has an older format: recomputing it", path)
            return None
        if not isinstance(entry, dict) or entry.get("key") != key \
                or entry.get("class") != c or entry.get("layer_names") != list(layer_names):
            raise ValueError("its format, key, class or layers do not match its place")
        if set(entry["means"]) != set(layer_names) or set(entry["paths"]) != set(layer_names):
            raise ValueError(f"its layers do not match {layer_names}")
        return entry
    except Exception as exc:  # noqa: BLE001 - any unreadable cache file is recomputed
        log.warning("reference statistics cache file %s is unreadable (%s: %s); recomputing it",
                    path, type(exc).__name__, exc)
        return None


def _compute(classifier: Classifier, source: ReferenceSource, wanted: list[int] | None, max_per_class: int,
             batch_size: int, device: str | torch.device | None, seed: int, num_workers: int,
             progress: bool | None, split: Split | None = None) -> ReferenceStats:
    plan = source.plan(classifier, wanted, max_per_class, seed, split)
    present = sorted({c for c, _ in plan})
    for c in wanted if wanted is not None else present:
        if c not in present:
            raise ReferenceDataError(
                f"{source.name}: no reference images of class {c} ({classifier.class_names[c]!r}). Fix: "
                f"{source.empty_hint(c, classifier)}."
            )
    if not plan:
        raise ReferenceDataError(
            f"{source.name}: the source holds no images of any class of model {classifier.name}. Check the "
            "reference config (root folder, labels) against the model's class names."
        )
    home = classifier.network.mean.device
    target = torch.device(device) if device is not None else home
    rows: dict[str, list[torch.Tensor]] = {l: [] for l in classifier.layer_names}
    pixel_stats: dict[str, list[torch.Tensor]] = {s: [] for s in IMAGE_STATS}
    examples: dict[int, list[torch.Tensor]] = {c: [] for c in present}
    labels: list[torch.Tensor] = []
    loader = DataLoader(_PlanDataset(source, plan, classifier), batch_size=batch_size, num_workers=num_workers)
    try:
        classifier.to(target)
        with tqdm(total=len(plan), desc=f"reference {source.name}", unit="img",
                  disable=None if progress is None else not progress) as bar:
            for cls, images in loader:
                path = activation_path(classifier, images.to(target))
                for l in classifier.layer_names:
                    rows[l].append(path[l].cpu())
                for s, values in image_statistics(images).items():
                    pixel_stats[s].append(values)
                for c, image in zip(cls.tolist(), images):
                    if len(examples[c]) < EXAMPLES_PER_CLASS:
                        examples[c].append(image.mul(255).round().clamp(0, 255).to(torch.uint8))
                labels.append(cls)
                bar.update(len(cls))
    finally:
        classifier.to(home)
    label = torch.cat(labels)
    flat = {l: torch.cat(v) for l, v in rows.items()}
    paths = {c: {l: flat[l][label == c].contiguous() for l in flat} for c in present}
    means = {c: {l: p.mean(0) for l, p in paths[c].items()} for c in present}
    counts = {c: int((label == c).sum()) for c in present}
    pixels = {s: torch.cat(v) for s, v in pixel_stats.items()}
    image_stats = {c: {s: v[label == c].contiguous() for s, v in pixels.items()} for c in present}
    return ReferenceStats(layer_names=list(classifier.layer_names), classes=present, means=means,
                          paths=paths, counts=counts, image_stats=image_stats,
                          examples={c: torch.stack(v) for c, v in examples.items()})
