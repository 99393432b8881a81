"""Guided terms (issue 17): they pull a prototype's path towards the guide photos, and the guide photos are
never the photos that score the prototypes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FAST, compose_cfg
from synthetic import make_reference_folder
from protoscope.errors import ConfigError
from protoscope.generation.pipeline import run_generation
from protoscope.generation.renderer import evaluate, render
from protoscope.guidance import MomentMatch, SortMatch, compute_guide_stats
from protoscope.models import load_model
from protoscope.models.hooks import activation_path
from protoscope.paths import conf_dir
from protoscope.reference import ImageFolderSource
from protoscope.reference.base import Split

MODEL_CFG = OmegaConf.load(conf_dir() / "model" / "tiny_cnn.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = make_reference_folder(tmp_path_factory.mktemp("ref"))
    return SimpleNamespace(root=root, classifier=load_model(MODEL_CFG))


def one_hot(c: int, rows: int = 1) -> torch.Tensor:
    t = torch.zeros(rows, 10)
    t[:, c] = 1
    return t


def distance_to_guide(classifier, images, guide, c: int) -> float:
    """Mean over layers of the L1 distance between the images' path and the guide photos' mean path."""
    path = activation_path(classifier, images, guide.layers)
    row = guide.classes.index(c)
    return float(sum((path[l] - guide.mean[l][row]).abs().mean() for l in guide.layers) / len(guide.layers))


@pytest.mark.parametrize("term_cls", [SortMatch, MomentMatch])
def test_guided_term_moves_the_path_towards_the_guide_photos_mean(world, term_cls):
    guide = compute_guide_stats(world.classifier, ImageFolderSource(world.root), [1], n_images=5,
                                split=Split("val"))
    term = term_cls(weight=1.0)
    term.bind(guide)
    start = render(world.classifier, term, steps=0, param="pixel", transform="none", targets=one_hot(1), progress=False)
    end = render(world.classifier, term, steps=60, param="pixel", transform="none", lr=0.05, targets=one_hot(1),
                 progress=False)
    before, after = (distance_to_guide(world.classifier, x, guide, 1) for x in (start, end))
    assert after < 0.4 * before, (before, after)
    assert float(evaluate(world.classifier, term, end, one_hot(1))) < 0.2 * float(
        evaluate(world.classifier, term, start, one_hot(1)))


def test_sort_match_is_zero_on_the_one_guide_photo_and_positive_elsewhere(world):
    source = ImageFolderSource(world.root)
    guide = compute_guide_stats(world.classifier, source, [0, 2], n_images=1, split=Split("val"))
    photo = torch.stack([source.load(guide.photos[0][0], world.classifier)])
    other = torch.stack([source.load(guide.photos[2][0], world.classifier)])
    term = SortMatch(weight=1.0)
    term.bind(guide)
    assert float(evaluate(world.classifier, term, photo, one_hot(0))) == pytest.approx(0.0, abs=1e-8)
    assert float(evaluate(world.classifier, term, other, one_hot(0))) > 1e-3
    # a row of a class without guide photos is refused, not scored against another class
    with pytest.raises(ConfigError, match="without guide photos"):
        evaluate(world.classifier, term, photo, one_hot(1))


def guided(tmp_path, root, *overrides):
    return compose_cfg("generate", [*FAST, "experiment=guided", "model=tiny_cnn", "param=pixel",
                                    "regularizer.tv.weight=0.03", *overrides], tmp_path)


def test_guide_and_scoring_photos_never_overlap_in_the_records(tmp_path, world):
    cfg = guided(tmp_path / "run", world.root, "reference=image_folder", f"reference.root={world.root}",
                 "reference.part=test", "guide.n_images=4")
    run_generation(cfg)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["tag"] == "guided (uses 4 photos per class)"
    assert record["guide"]["part"] == "val" and record["guide"]["n_images"] == 4
    guide, scoring = record["guide"]["photos"], record["scoring_photos"]
    assert sorted(guide) == sorted(scoring) == ["class_0", "class_1", "class_2"]
    for name in guide:
        assert len(guide[name]) == 4 and len(scoring[name]) == 5  # 10 photos per class: val 5 (4 used), test 5
        assert not set(guide[name]) & set(scoring[name])
    summary = (tmp_path / "run" / "evaluation" / "summary.md").read_text()
    assert summary.startswith("**Guided: uses 4 photos per class (the reference's val part; scored on the test part)")


@pytest.mark.parametrize("overrides, message", [
    ((), "needs a reference holding photos"),
    (("reference=image_folder", "reference.root={root}"), "reference.part=None: the photos that score"),
    (("reference=image_folder", "reference.root={root}", "reference.part=val"), "set reference.part=test"),
    (("reference=image_folder", "reference.root={root}", "reference.part=test", "guide.n_images=0"),
     "at least 1 photo"),
])
def test_guided_errors_clearly_without_a_disjoint_reference(tmp_path, world, overrides, message):
    cfg = guided(tmp_path, world.root, *(o.format(root=world.root) for o in overrides))
    with pytest.raises(ConfigError, match=message):
        run_generation(cfg)
