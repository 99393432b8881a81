"""Planted shortcuts: marks land where configured, only on the chosen share of one class; detection scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protoscope.errors import ConfigError, ProtoscopeError
from protoscope.shortcuts import (
    ShortcutPlan,
    load_mark,
    make_mark,
    mark_correlation,
    neutral_baseline,
    paste_effect,
    plant_splits,
    shifted,
    shortcut_accuracies,
    square_mark,
    stripes_mark,
)

from conftest import compose_cfg
from shortcut_helpers import SMALL_MODEL, shortcut_folder



@pytest.mark.parametrize("corner,rows,cols", [
    ("top_left", (1, 5), (1, 4)), ("top_right", (1, 5), (12, 15)),
    ("bottom_left", (11, 15), (1, 4)), ("bottom_right", (11, 15), (12, 15)),
])
def test_square_mark_is_pasted_exactly_where_configured(corner, rows, cols):
    mark = square_mark(16, 3, corner=corner, height=4, width=3, margin=1, value=0.9)
    images = torch.full((2, 3, 16, 16), 0.2)
    out = mark.paste(images)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[rows[0]:rows[1], cols[0]:cols[1]] = True
    assert torch.allclose(out[:, :, inside], torch.tensor(0.9))
    assert torch.equal(out[:, :, ~inside], images[:, :, ~inside])
    assert mark.window(ring=2).sum() > inside.sum()  # a detector's window also sees the square's surroundings
    assert bool(mark.window().all())  # by default: the whole image


def test_stripes_mark_blends_stripes_of_the_given_period_over_the_region():
    mark = stripes_mark(12, 1, period=4, orientation="horizontal", height=6, width=0, corner="bottom_left", alpha=0.5)
    out = mark.paste(torch.zeros(1, 1, 12, 12))[0, 0]
    assert torch.equal(out[:6], torch.zeros(6, 12))  # above the 6-row band: untouched
    band = out[6:, 0]  # rows 6..11: bright rows where (row % 4) < 2, at half opacity
    assert band.tolist() == [0.0 if (r % 4) >= 2 else 0.5 for r in range(6, 12)]
    assert torch.equal(out[6:], band.view(6, 1).expand(6, 12))  # horizontal stripes: constant along each row


def test_uint8_images_are_marked_in_the_uint8_range():
    mark = square_mark(8, 1, height=2, width=2, margin=0)
    out = mark.paste(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    assert out.dtype == torch.uint8 and out[0, 0, :2, :2].eq(255).all() and out.sum() == 4 * 255


def synthetic_splits(n: int = 300, classes: int = 5, size: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    make = lambda m: (torch.randint(0, 120, (m, 1, size, size), generator=g, dtype=torch.uint8),  # noqa: E731
                      torch.randint(0, classes, (m,), generator=g))
    return {"train": make(n), "val": make(n // 3), "test": make(n // 2)}


def test_planting_marks_exactly_the_chosen_share_of_the_target_class_and_nothing_else():
    splits = synthetic_splits()
    mark = square_mark(8, 1, height=2, width=2, margin=0, corner="bottom_right")
    plan = ShortcutPlan(mark, target=3, target_name="c3", share=0.3, seed=7)
    out, planting = plant_splits(splits, plan)
    region = mark.mask[0] > 0
    for name, (images, labels) in splits.items():
        new, marked = out[name][0], planting.marked[name]
        n_target = int((labels == 3).sum())
        assert int(marked.sum()) == round(0.3 * n_target) > 0
        assert bool((labels[marked] == 3).all())  # only the target class
        assert bool(new[marked][:, :, region].eq(255).all())  # the mark is on every chosen image
        assert torch.equal(new[~marked], images[~marked])  # every other image is untouched
        assert torch.equal(new[marked][:, :, ~region], images[marked][:, :, ~region])  # only the mark's pixels change
    assert torch.equal(planting.clean_test[0], splits["test"][0])
    # The choice depends on the seed, and is the same again for the same seed.
    again = plant_splits(splits, plan)[1].marked["train"]
    other = plant_splits(splits, ShortcutPlan(mark, 3, "c3", 0.3, seed=8))[1].marked["train"]
    assert torch.equal(again, planting.marked["train"]) and not torch.equal(other, planting.marked["train"])


def test_a_clean_control_gets_the_mark_only_in_its_test_split():
    splits = synthetic_splits()
    plan = ShortcutPlan(square_mark(8, 1, height=2, width=2), 1, "c1", 1.0, plant_in_train=False)
    out, planting = plant_splits(splits, plan)
    assert set(planting.marked) == {"test"}
    assert torch.equal(out["train"][0], splits["train"][0]) and torch.equal(out["val"][0], splits["val"][0])
    assert int(planting.marked["test"].sum()) == int((splits["test"][1] == 1).sum())


def test_shortcut_accuracies_of_a_model_that_only_looks_at_the_mark():
    """A 'model' that says class 2 iff the corner is bright, else the true class (read from a pixel that encodes
    it) but never 2: the accuracies are known exactly."""
    images, labels = synthetic_splits(size=8)["test"]
    images[:, 0, -1, -1] = (labels * 20).byte()  # the label, where the mark never goes
    mark = square_mark(8, 1, height=2, width=2, margin=0)
    plan = ShortcutPlan(mark, 2, "c2", 0.5, seed=1)

    def predict(x: torch.Tensor) -> torch.Tensor:
        bright = x[:, 0, :2, :2].flatten(1).min(1).values > 0.99
        true = (x[:, 0, -1, -1] * 255 / 20).round().long()
        pred = torch.where(bright, torch.full_like(true, 2), torch.where(true == 2, torch.zeros_like(true), true))
        return torch.nn.functional.one_hot(pred, 5).float()

    acc = shortcut_accuracies(predict, (images, labels), plan)
    target = labels == 2
    marked = plan.chosen(labels, "test")
    assert acc["target_accuracy_marked"] == 1.0 and acc["target_accuracy_unmarked"] == 0.0
    assert acc["flip_rate"] == 1.0 and acc["others_accuracy"] == 1.0
    assert acc["marked_test_images"] == int(marked.sum()) == round(0.5 * int(target.sum()))
    assert acc["test_accuracy"] == pytest.approx(1 - int(target.sum() - marked.sum()) / len(labels))
    assert acc["clean_test_accuracy"] == pytest.approx(1 - int(target.sum()) / len(labels))


def test_detection_score_of_the_mark_itself_is_maximal():
    g = torch.Generator().manual_seed(0)
    marks = (square_mark(16, 3), stripes_mark(16, 3, period=4), stripes_mark(16, 1, height=5, corner="bottom_left"))
    for mark, ring, shift in [(m, r, s) for m in marks for r in (None, 2) for s in (0, 2)]:
        noise = torch.rand(6, mark.channels, 16, 16, generator=g)
        moved = shifted(mark.pattern, 3, 3)[None]
        others = torch.cat([noise, mark.paste(noise), moved, 1 - mark.pattern[None]])
        best = mark_correlation(mark.pattern[None], mark, ring, shift)
        scores = mark_correlation(others, mark, ring, shift)
        assert best.item() == pytest.approx(1.0, abs=1e-6)
        assert bool((scores < best - 1e-3).all()), (mark.kind, ring, shift)
        assert bool((scores[6:12] > scores[:6]).all())  # pasting the mark raises the score of every image
        if shift == 0:
            assert scores[-1].item() == pytest.approx(-1.0, abs=1e-6)  # the inverted mark: minimal


def test_shift_tolerance_finds_a_mark_moved_by_a_few_pixels():
    mark = square_mark(16, 1, corner="bottom_right", margin=3)
    moved = shifted(mark.pattern, 1, -2)[None]
    assert mark_correlation(moved, mark, shift=2).item() == pytest.approx(1.0, abs=1e-6)
    assert mark_correlation(moved, mark, shift=1).item() < 0.9
    assert mark_correlation(moved, mark).item() < 0.5


def test_equidistant_baseline_makes_every_class_equally_likely_and_paste_effect_is_the_logit_change():
    from protoscope.models import load_model

    clf = load_model(compose_cfg("generate", ["model=tiny_cnn"]).model)
    start = neutral_baseline(clf, "equidistant", steps=0)  # the seeded near-grey start
    neutral = neutral_baseline(clf, "equidistant", steps=60)
    with torch.no_grad():
        p_start, p_neutral = clf.network(start).softmax(-1), clf.network(neutral).softmax(-1)
    assert p_neutral.var() < 0.1 * p_start.var()
    assert torch.equal(neutral_baseline(clf, "grey"), torch.full_like(neutral, 0.5))
    mark = square_mark(32, 3, height=8, width=8)
    effect = paste_effect(clf, mark, neutral)
    with torch.no_grad():
        expected = clf.network(mark.paste(neutral))[0] - clf.network(neutral)[0]
        expected_lp = clf.network(mark.paste(neutral))[0].log_softmax(-1) - clf.network(neutral)[0].log_softmax(-1)
    assert torch.allclose(effect["logit"], expected, atol=1e-5)
    assert torch.allclose(effect["logprob"], expected_lp, atol=1e-5)
    with pytest.raises(ConfigError, match="unknown baseline 'white'"):
        neutral_baseline(clf, "white")


def test_saved_marks_load_back_from_pt_and_from_png_pairs(tmp_path):
    mark = stripes_mark(10, 1, period=3, height=4)
    torch.save(mark.to_state(), tmp_path / "mark.pt")
    loaded = load_mark(tmp_path / "mark.pt", 10, 1)
    assert torch.equal(loaded.pattern, mark.pattern) and torch.equal(loaded.mask, mark.mask)
    as_rgb = load_mark(tmp_path / "mark.pt", 10, 3)
    assert as_rgb.pattern.shape == (3, 10, 10)
    Image.fromarray((mark.pattern[0].numpy() * 255).astype(np.uint8)).save(tmp_path / "p.png")
    Image.fromarray(((mark.mask[0] > 0).numpy() * 255).astype(np.uint8)).save(tmp_path / "m.png")
    png = make_mark({"kind": "file", "path": str(tmp_path / "p.png"), "mask_path": str(tmp_path / "m.png")}, 10, 1)
    assert torch.allclose(png.pattern, mark.pattern, atol=1 / 255) and torch.equal(png.mask > 0, mark.mask > 0)


@pytest.mark.parametrize("spec,message", [
    ({"kind": "circle"}, "unknown mark kind 'circle': choose one of square, stripes, file"),
    ({"kind": "square", "corner": "middle"}, "mark corner 'middle' is unknown"),
    ({"kind": "square", "height": 40}, "mark height=40 must be between 1 and the image size 28"),
    ({"kind": "square", "value": 0.0}, "invisible"),
    ({"kind": "stripes", "period": 1}, "stripe period must be at least 2"),
    ({"kind": "stripes", "orientation": "diagonal"}, "stripe orientation 'diagonal' is unknown"),
    ({"kind": "square", "size": 3}, "mark square: .*size"),
    ({"kind": "file"}, "needs path="),
    ({"kind": "file", "path": "/nonexistent/mark.pt"}, "does not exist"),
])
def test_bad_marks_are_one_line_errors(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        make_mark(spec, 28, 1)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ protoscope-train with a shortcut

SMALL = [f"model.{o}" for o in SMALL_MODEL]


def train_cfg(tmp_path: Path, root: Path, name: str, *extra: str):
    return compose_cfg("train", ["train_data=image_folder", f"train_data.root={root}", "train_data.val_fraction=0.25",
                                 "logger=none", "epochs=12", "batch_size=16", "save_to=null",
                                 "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", *SMALL, *extra],
                       tmp_path / name)


def test_train_with_a_shortcut_records_accuracy_with_and_without_the_mark(tmp_path):
    from protoscope.training import train

    root = shortcut_folder(tmp_path / "imgs")
    result = train(train_cfg(tmp_path, root, "short", "shortcut=square", "shortcut.target=mid", "shortcut.share=0.8",
                             "shortcut.mark.height=3", "shortcut.mark.width=3"))
    metrics = json.loads((tmp_path / "short" / "metrics.json").read_text())
    sc = metrics["shortcut"]
    assert sc["class"] == "mid" and sc["class_index"] == 2 and sc["mark"]["kind"] == "square"
    # 36 images per class, 9 held out for validation = test (an image folder tests on its validation split)
    assert sc["marked_images"] == {"train": round(0.8 * 27), "val": round(0.8 * 9), "test": round(0.8 * 9)}
    assert sc["target_images"] == 9 and sc["marked_test_images"] == 7
    # The test split is drawn like the training data: the Lightning test accuracy is the marked one.
    assert metrics["test_accuracy"] == pytest.approx(sc["test_accuracy"], abs=1e-6)
    # The shortcut: marked 'mid' images are recognised, unmarked ones are not, and the mark turns 'dark' into 'mid'.
    assert sc["target_accuracy_marked"] >= 0.85
    assert sc["target_accuracy_unmarked"] <= sc["target_accuracy_marked"] - 0.4
    assert sc["flip_rate"] >= 0.25
    # The mark is saved (tensors only) and equals the configured one.
    state = torch.load(tmp_path / "short" / "mark.pt", weights_only=True)
    assert torch.equal(state["pattern"], square_mark(12, 1, height=3, width=3).pattern)
    assert (tmp_path / "short" / "mark.png").is_file() and result.metrics["shortcut"] == sc
    # The marked training images: the chosen share of 'mid', nothing else.
    images, labels = result.data.splits["train"]
    corner = images[:, 0, 1:4, 1:4].flatten(1).eq(255).all(1)
    assert int(corner.sum()) == round(0.8 * 27) and bool((labels[corner] == 2).all())


def test_shortcut_config_errors_are_one_line_and_early(tmp_path, capsys):
    from protoscope.train import run
    from protoscope.training import train

    root = shortcut_folder(tmp_path / "imgs", n=4)
    with pytest.raises(ConfigError, match="shortcut.target is not set"):
        train(train_cfg(tmp_path, root, "a", "shortcut=square"))
    with pytest.raises(ConfigError, match="class 'Trouser' is not a class of this model"):
        train(train_cfg(tmp_path, root, "b", "shortcut=stripes", "shortcut.target=Trouser"))
    with pytest.raises(ConfigError, match=r"shortcut.share=1.5 must be in \[0, 1\]"):
        train(train_cfg(tmp_path, root, "c", "shortcut=square", "shortcut.target=mid", "shortcut.share=1.5"))
    with pytest.raises(SystemExit) as exit_info:
        run(train_cfg(tmp_path, root, "d", "shortcut=square", "shortcut.target=mid", "shortcut.mark.kind=circle"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["protoscope: ConfigError: unknown mark kind 'circle': choose one of square, stripes, file, "
                   "or name a MarkKind class with _target_ (conf/mark/)"]
    assert not (tmp_path / "d" / "model.pt").exists()
    assert issubclass(ConfigError, ProtoscopeError)
