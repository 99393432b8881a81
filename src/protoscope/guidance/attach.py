"""From a composed config to bound guide statistics, and the records of which photos guided and scored."""

from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

import torch
from omegaconf import DictConfig

from ..errors import ConfigError
from ..models.classifier import Classifier
from ..objectives.algebra import Sum, Term
from ..reference.base import Split
from ..reference.build import build_source, is_disabled
from .stats import GuideStats, compute_guide_stats

log = logging.getLogger("protoscope")
FIX = "e.g. reference=imagenette reference.part=test: the guide photos come from its guide.part=val part"


def guided_terms(terms: Iterable[Term]) -> list[Term]:
    """The terms (inside sums too) that read guide statistics."""
    found: list[Term] = []
    for term in terms:
        if isinstance(term, Sum):
            found.extend(guided_terms(term.terms))
        elif getattr(term, "needs_guide", False):
            found.append(term)
    return found


def _split(reference: DictConfig, part: Any) -> Split | None:
    return Split(str(part), float(reference.get("part_fraction", 0.5)), int(reference.get("part_seed", 0))) \
        if part else None


def guide_config(cfg: DictConfig) -> tuple[DictConfig, DictConfig]:
    """``(guide, reference)`` of a guided run, or a ConfigError naming what is missing or would overlap."""
    guide, reference = cfg.get("guide"), cfg.get("reference")
    if guide is None:
        raise ConfigError("a guided term (sort_match / moment_match) needs guide photos: use experiment=guided "
                          "(or add +guide.n_images=10 +guide.part=val)")
    if is_disabled(reference) or is_disabled(reference.get("name", "x")):
        raise ConfigError(f"experiment=guided needs a reference holding photos of the classes ({FIX})")
    part, scored = guide.get("part"), reference.get("part")
    if part not in ("val", "test"):
        raise ConfigError(f"guide.part={part}: use val (and reference.part=test to score on the other part)")
    if scored != ("test" if part == "val" else "val"):
        raise ConfigError(f"guide.part={part} and reference.part={scored}: the photos that score the prototypes must "
                          f"be the other part, set reference.part={'test' if part == 'val' else 'val'}")
    if int(guide.get("n_images", 0)) < 1:
        raise ConfigError(f"guide.n_images={guide.get('n_images')}: use at least 1 photo per class")
    return guide, reference


def attach_guide(cfg: DictConfig, classifier: Classifier, terms: Sequence[Term], classes: Sequence[int],
                 device: torch.device | str | None = None) -> GuideStats | None:
    """Compute the guide statistics ``cfg.guide`` asks for and bind them to every guided term in ``terms``;
    None when no term reads them."""
    guided = guided_terms(terms)
    if not guided:
        return None
    guide, reference = guide_config(cfg)
    layers = sorted({l for t in guided for l in t.layers(classifier)}, key=_path_order(classifier))
    stats = compute_guide_stats(classifier, build_source(reference), classes, int(guide.n_images),
                                _split(reference, guide.part), seed=int(guide.get("seed", 0)), layers=layers,
                                device=device)
    for term in guided:
        term.bind(stats)
    log.info("guide: %d photos per class of %d classes from the %s part (%d layers)", stats.n_images,
             len(stats.classes), guide.part, len(stats.layers))
    return stats


def _path_order(classifier: Classifier):
    names = list(classifier.layer_names)
    return lambda l: (names.index(l) if l in names else len(names), l)


def reference_photos(reference: DictConfig, classifier: Classifier, classes: Sequence[int]) -> dict[str, list[str]]:
    """The photos that score the prototypes (a listing: nothing is decoded), by class name."""
    source = build_source(reference)
    plan = source.plan(classifier, classes, int(reference.get("max_per_class", 50)), int(reference.get("seed", 0)),
                       _split(reference, reference.get("part")))
    out: dict[str, list[str]] = {}
    for c, item in plan:
        out.setdefault(classifier.class_names[c], []).append(str(item))
    return out
