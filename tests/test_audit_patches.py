"""Patch prototypes and shortcut candidates on a small model with a planted local feature."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import compose_cfg
from protoscope.audit.candidates import best_rows, robust_z, shortcut_candidates
from protoscope.audit.patches import (PatchSettings, appearance, grid_positions, optimise_patches, paste, patch_gains,
                                      patch_grid, placement_range)
from protoscope.audit.writers import write_tables
from protoscope.errors import ConfigError
from protoscope.generation.renderer import as_classifier, render
from protoscope.models import load_model
from protoscope.objectives import Logit
from protoscope.shortcuts.marks import Mark, make_mark
from protoscope.shortcuts.matching import best_match, template_match

PLANTED, SIZE = 3, 32


def glyph() -> torch.Tensor:
    """``[6, 6]`` a bright corner-and-bar shape on dark: the planted local feature."""
    g = torch.zeros(6, 6)
    g[0, :] = 1
    g[:, 0] = 1
    g[3, 2:5] = 1
    return g


class Planted(nn.Module):
    """``base`` plus, for one class, ``gain`` times the best match of a zero-mean glyph filter anywhere in the
    image, softly above ``threshold`` (a global max: the class responds to the glyph wherever it is, like a watermark
    shortcut; smooth images stay below the threshold)."""

    def __init__(self, base: nn.Module, cls: int, gain: float = 5.0, threshold: float = 2.0) -> None:
        super().__init__()
        self.base, self.cls, self.gain, self.threshold = base, cls, gain, threshold
        kernel = glyph() - glyph().mean()
        self.register_buffer("kernel", (kernel / kernel.norm()).expand(1, 3, 6, 6) / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        response = F.conv2d(x, self.kernel).amax((-2, -1))[:, 0]
        logits = self.base(x)
        return logits + self.gain * F.one_hot(torch.tensor(self.cls), logits.shape[-1]).to(x) * F.softplus(response - self.threshold)[:, None]


@pytest.fixture(scope="module")
def planted():
    """tiny_cnn (10 classes, 32 px) whose class 3 also fires on the glyph; its inputs are in [-2, 2]."""
    classifier = load_model(compose_cfg("generate", ["model=tiny_cnn"]).model)
    classifier.network.net = Planted(classifier.network.net, PLANTED)
    return classifier


def carriers(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = F.avg_pool2d(torch.rand(n, 3, SIZE, SIZE, generator=g), 5, stride=1, padding=2)
    return torch.cat([torch.full((1, 3, SIZE, SIZE), 0.5), smooth])


SETTINGS = PatchSettings(size=10, steps=60, lr=0.1, carriers_per_step=4, param="pixel", init_std=0.1)


@pytest.fixture(scope="module")
def result(planted):
    return optimise_patches(planted, carriers(8, 0), list(range(10)), SETTINGS)


def test_patch_prototype_recovers_the_planted_glyph(result):
    corr = template_match(result.patches, glyph(), torch.ones(6, 6), ring=0)
    others = torch.cat([corr[:PLANTED], corr[PLANTED + 1:]])
    assert corr[PLANTED] > 0.8, corr
    assert corr[PLANTED] > others.max() + 0.2, corr


def glyph_mark() -> Mark:
    """The planted glyph as a mark at a fixed place of a 32 px image (bright on dark, pasted opaque)."""
    pattern, mask = torch.zeros(3, SIZE, SIZE), torch.zeros(1, SIZE, SIZE)
    pattern[:, 12:18, 12:18] = glyph()
    mask[:, 12:18, 12:18] = 1
    return Mark("glyph", pattern, mask)


def test_mark_match_ranks_the_planted_class_patch_first(result):
    scores = glyph_mark().match_patches(result.patches)
    others = torch.cat([scores[:PLANTED], scores[PLANTED + 1:]])
    assert scores[PLANTED] > 0.5 and scores[PLANTED] > others.max() + 0.2, scores


class TwoRoutes(nn.Module):
    """Class 3 rises through either of two hidden detectors, one for the glyph and one for a bright dot;
    two more random detectors feed the other classes. ``detectors`` is the hidden layer of its path."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        dot = torch.zeros(6, 6)
        dot[2:4, 2:4] = 1
        kernels = torch.stack([glyph(), dot, torch.rand(6, 6, generator=g), torch.rand(6, 6, generator=g)])
        kernels = kernels - kernels.mean((1, 2), keepdim=True)
        kernels = kernels / kernels.flatten(1).norm(dim=1)[:, None, None]
        conv = nn.Conv2d(3, 4, 6)
        conv.weight.data = kernels[:, None].expand(4, 3, 6, 6) / 3
        conv.bias.data = torch.full((4,), -0.6)  # unit-norm kernels: a detector fires on a close match only
        self.detectors = nn.Sequential(conv, nn.ReLU())
        self.head = nn.Linear(4, 10)
        self.head.weight.data = torch.rand(10, 4, generator=g) * torch.tensor([0.0, 0.0, 1.0, 1.0])
        self.head.weight.data[PLANTED] = torch.tensor([5.0, 5.0, 0.0, 0.0])
        self.head.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.detectors(x).amax((-2, -1)))


def test_path_agreement_tells_the_marks_route_from_another_route_to_the_same_class():
    from protoscope.audit.path_agreement import path_agreement

    clf = as_classifier(TwoRoutes(), size=SIZE, mean=(0.0, 0.0, 0.0))
    clf.layer_names = ["detectors", "logits"]
    patches = torch.full((3, 3, 10, 10), 0.5)
    patches[0, :, 2:8, 2:8] = glyph()  # the mark's shape
    patches[1, :, 4:6, 4:6] = 1.0  # a bright dot: the other route to the same class
    patches[2] = torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(1))
    held = carriers(6, 1)
    gains = patch_gains(clf, patches, [PLANTED] * 3, held, per_side=2)
    assert min(gains[0]["logit_gain"], gains[1]["logit_gain"]) > 1.0  # both patches raise the class
    for remove_common in (True, False):
        agreement = path_agreement(clf, patches, held, glyph_mark(), per_side=2, remove_common=remove_common)
        assert agreement[0] > 0.8 and agreement[0] > agreement[1] + 0.5 and agreement[0] > agreement[2] + 0.3, agreement
    whole = torch.cat([glyph_mark().pattern, glyph_mark().mask])[None]  # the mark itself as a whole-image overlay
    assert path_agreement(clf, whole, held, glyph_mark(), per_side=1)[0] == pytest.approx(1.0, abs=1e-5)


def test_match_patches_scores_a_patch_on_grey_with_the_marks_own_detector():
    square = make_mark({"kind": "square"}, 28, 1)
    patch = torch.full((2, 1, 12, 12), 0.5)
    patch[0, :, 3:11, 2:10] = square.paste(torch.full((1, 1, 28, 28), 0.5))[0, :, 0:8, 0:8]  # the mark and its ring
    patch[1] = torch.rand(1, 12, 12, generator=torch.Generator().manual_seed(0))
    scores = square.match_patches(patch)
    canvas = torch.full((2, 1, 28, 28), 0.5)
    canvas[:, :, 8:20, 8:20] = patch
    assert torch.equal(scores, square.detect(canvas))
    assert scores[0] == pytest.approx(1.0, abs=1e-4) and scores[1] < 0.8
    with pytest.raises(ConfigError, match="do not fit a mark"):
        square.match_patches(torch.rand(1, 3, 12, 12))


def test_overlay_patch_recovers_the_glyph_as_a_bright_mark(planted):
    settings = PatchSettings(size=10, steps=60, lr=0.3, carriers_per_step=4, param="pixel", init_std=0.1,
                             kind="overlay", mask_weight=0.5)
    result = optimise_patches(planted, carriers(8, 0), [PLANTED, 1, 7], settings)
    assert result.patches.shape == (3, 4, 10, 10)  # colour, then opacity
    corr = template_match(appearance(result.patches, 3), glyph(), torch.ones(6, 6), ring=0)
    assert corr[0] > 0.8 and corr[0] > corr[1:].max() + 0.2, corr
    assert result.patches[0, :3].mean() > 0.8  # the mark is drawn bright, as the glyph is


class FixedTwoTone(nn.Module):
    """``base`` plus, for one class, a response to a fixed-place mark of two colours (red on the left half of a
    6 px square at (4, 20), green on the right): a one-colour overlay can draw only one half of it."""

    def __init__(self, base: nn.Module, cls: int, gain: float = 5.0, threshold: float = 1.0) -> None:
        super().__init__()
        self.base, self.cls, self.gain, self.threshold = base, cls, gain, threshold
        self.register_buffer("kernel", two_tone() / two_tone().norm())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        response = (x[:, :, 4:10, 20:26] * self.kernel).sum((1, 2, 3))
        logits = self.base(x)
        return logits + self.gain * F.one_hot(torch.tensor(self.cls), logits.shape[-1]).to(x) * F.softplus(response - self.threshold)[:, None]


def two_tone() -> torch.Tensor:
    """``[3, 6, 6]``: red-minus-green on the left half, green-minus-red on the right."""
    k = torch.zeros(3, 6, 6)
    k[0, :, :3], k[1, :, :3] = 1, -1
    k[0, :, 3:], k[1, :, 3:] = -1, 1
    return k


def test_pixel_colour_overlay_finds_a_two_colour_mark_at_a_fixed_place():
    classifier = load_model(compose_cfg("generate", ["model=tiny_cnn"]).model)
    classifier.network.net = FixedTwoTone(classifier.network.net, PLANTED)
    corr = {}
    for colour in ("uniform", "pixel"):
        settings = PatchSettings(size=SIZE, steps=60, lr=0.1, carriers_per_step=4, param="pixel", init_std=0.1,
                                 kind="overlay", mask_weight=0.1, colour=colour)
        result = optimise_patches(classifier, carriers(8, 0), [PLANTED], settings)
        assert result.patches.shape == (1, 4, SIZE, SIZE)
        drawn = appearance(result.patches, 3)[0, :2, 4:10, 20:26] - 0.5  # red and green (blue is free)
        corr[colour] = F.cosine_similarity(drawn.flatten(), two_tone()[:2].flatten(), dim=0).item()
    assert corr["pixel"] > 0.8 and corr["pixel"] > corr["uniform"] + 0.15, corr
    with pytest.raises(ConfigError, match="patch colour 'rgb'"):
        optimise_patches(classifier, carriers(2, 0), [1], PatchSettings(size=4, kind="overlay", colour="rgb"))


def test_gains_on_held_out_carriers(planted, result):
    rows = patch_gains(planted, result.patches, result.classes, carriers(6, 1)[1:])
    planted_row = rows[PLANTED]
    assert planted_row["hit_rate"] == 1.0 and planted_row["mean_logprob"] > -0.1
    assert planted_row["logprob_gain"] > max(r["logprob_gain"] for r in rows if r["row"] != PLANTED)


def test_candidates_rank_the_planted_class_first(planted, result, tmp_path):
    # carriers of every class: the model's prototypes, each counted as its own class
    targets = torch.eye(10).repeat(2, 1)
    protos = render(planted, Logit(), steps=20, rows=20, size=SIZE, param="pixel", transform="none",
                    targets=targets, progress=False)
    records = shortcut_candidates(planted, result.patches, result.classes, protos, list(range(10)) * 2)
    assert {r["carrier_classes"] for r in records} == {9}
    assert records[0]["class_index"] == PLANTED and records[0]["candidate"]
    assert records[0]["flip_rate"] > 0.7 and records[0]["classes_flipped"] == 9
    assert records[0]["logprob_gain"] > 2 * max(r["logprob_gain"] for r in records[1:])
    assert not records[-1]["candidate"]
    files = write_tables(tmp_path, {"candidates": records}, command="pytest")
    lines = files["candidates_md"].read_text().splitlines()
    assert "`pytest`" in lines[2] and f"| 1 | {PLANTED} |" in lines[6]


def test_rows_do_not_depend_on_their_batch(planted):
    settings = PatchSettings(size=6, steps=3, param="pixel", carriers_per_step=2)
    both = optimise_patches(planted, carriers(3, 0), [1, 5], settings, seeds=[0, 4]).patches
    alone = optimise_patches(planted, carriers(3, 0), [5], settings, seeds=[4]).patches
    other_seed = optimise_patches(planted, carriers(3, 0), [5], settings, seeds=[5]).patches
    assert torch.allclose(both[1], alone[0], atol=1e-5)
    assert not torch.allclose(alone, other_seed)


def test_paste_places_the_patch_and_keeps_the_rest():
    carrier = torch.rand(2, 3, 12, 12)
    patch = torch.zeros(2, 3, 4, 4, requires_grad=True)
    out = paste(carrier, patch, torch.tensor([[0, 8], [5, 3]]))
    assert out[0, :, 0:4, 8:12].abs().sum() == 0 and out[1, :, 5:9, 3:7].abs().sum() == 0
    keep = torch.ones(2, 1, 12, 12, dtype=torch.bool)
    keep[0, :, 0:4, 8:12] = False
    keep[1, :, 5:9, 3:7] = False
    assert torch.equal(out.masked_select(keep), carrier.masked_select(keep))
    out.sum().backward()
    assert patch.grad.abs().min() > 0


def test_paste_blends_an_overlay_by_its_own_opacity_per_pixel():
    carrier = torch.rand(3, 3, 10, 10)
    overlay = torch.rand(3, 4, 5, 5, requires_grad=True)  # colour, then opacity
    where = torch.tensor([[0, 0], [5, 5], [2, 4]])
    out = paste(carrier, overlay, where)
    for i, (y, x) in enumerate(where.tolist()):
        colour, alpha = overlay[i, :3], overlay[i, 3:]
        expected = carrier[i].clone()
        expected[:, y:y + 5, x:x + 5] = carrier[i, :, y:y + 5, x:x + 5] * (1 - alpha) + colour * alpha
        assert torch.allclose(out[i], expected)
    out[:, 0].sum().backward()  # the first channel depends on its colour channel and on the opacity only
    assert overlay.grad[:, 1:3].abs().sum() == 0 and overlay.grad[:, 3].abs().min() > 0


def test_placement_region_and_grid():
    assert placement_range(32, 8, (0.5, 0.0, 1.0, 0.5)) == (16, 0, 24, 8)
    pos = grid_positions(32, 8, 3, (0.5, 0.0, 1.0, 0.5))
    assert pos[:, 0].min() == 16 and pos[:, 0].max() == 24 and pos[:, 1].max() == 8 and len(pos) == 9
    with pytest.raises(ConfigError, match="does not fit the region"):
        placement_range(32, 20, (0.5, 0.0, 1.0, 1.0))


def test_bad_settings_are_one_line_errors(planted):
    with pytest.raises(ConfigError, match="patch size 40"):
        optimise_patches(planted, carriers(2, 0), [1], PatchSettings(size=40))
    with pytest.raises(ConfigError, match="carriers must be"):
        optimise_patches(planted, torch.rand(2, 3, 16, 16), [1], PatchSettings(size=4))
    with pytest.raises(ConfigError, match="class indices"):
        optimise_patches(planted, carriers(2, 0), [10], PatchSettings(size=4))
    with pytest.raises(ConfigError, match="objective"):
        optimise_patches(planted, carriers(2, 0), [1], PatchSettings(size=4, objective="prob"))


def test_template_match_is_position_free_and_mask_weighted():
    text = torch.zeros(8, 20)
    text[2, 1:19] = 1
    text[2:7, 6] = 1
    text[5, 10:16] = 1
    g = torch.Generator().manual_seed(0)
    images = 0.3 + 0.1 * torch.rand(4, 3, 40, 40, generator=g)
    images[0, :, 30:38, 1:21] += 0.5 * text  # the text anywhere, at half opacity, on a noisy background
    images[1, :, 3:11, 17:37] += 0.5 * text
    images[2, :, 10:18, 10:30] += 0.5 * text.flip(1)  # mirrored: not the same text
    corr = template_match(images, text, text, ring=1)
    assert corr[0] > 0.9 and corr[1] > 0.9
    assert corr[2] < corr[0] - 0.2 and corr[3] < 0.6
    # the text is wider than a patch: a patch holding part of it still matches
    part = images[:2, :, 30:38, 1:13]
    assert template_match(part, text, text, ring=1)[0] > 0.9


def test_mark_match_finds_the_mark_where_it_is_and_scores_flat_images_zero():
    pattern, mask = torch.zeros(3, 8, 8), torch.zeros(1, 8, 8)
    mask[:, 2:6, 2:6] = 1  # a 4x4 square in an 8x8 window (its ring: the window's border)
    pattern[0] = 1.0
    images = torch.full((2, 3, 24, 24), 0.5)
    images[0, :, 7:15, 3:11] = mask * pattern + (1 - mask) * 0.5  # the window's corner at (7, 3)
    match = best_match(images, pattern, mask, pad=4)
    assert match.score[0] == pytest.approx(1.0, abs=1e-4)
    assert (int(match.top[0]), int(match.left[0])) == (7, 3)
    assert float(match.score[1]) == 0.0  # plain grey: nothing to correlate


def test_helpers():
    assert best_rows([4, 4, 2, 2], [0.1, 0.5, 0.3, 0.2]) == [1, 2]
    z = robust_z(torch.tensor([0.1, 0.1, 0.12, 0.09, 0.9]), 0.05)
    assert z[-1] > 2 and z[:4].abs().max() < 2
    assert torch.equal(robust_z(torch.zeros(5), 0.05), torch.zeros(5))
    assert robust_z(torch.tensor([0.0, 0.0, 0.0, 0.04]), 0.05)[-1] < 1  # a few flips are no anomaly
    grid = patch_grid(torch.zeros(5, 3, 4, 4), columns=2, pad=1)
    assert grid.shape == (3, 16, 11) and grid.min() == 0 and grid.max() == 1
