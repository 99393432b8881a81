"""The loss terms as documented: L_hf on a hand-computed image and the weight of L_hf changing the result
of a run (blur is no loss term: tests/test_param_ops.py)."""

from __future__ import annotations

import pytest
import torch

from conftest import FAST, compose_cfg
from protoscope.generation.context import StepContext
from protoscope.generation.pipeline import run_generation
from protoscope.regularizers import TotalVariation


def _ctx(images: torch.Tensor) -> StepContext:
    return StepContext(images=images, inputs=images, logits=torch.zeros(len(images), 2),
                       targets=torch.zeros(len(images), 2))


def test_total_variation_is_the_documented_formula_on_a_hand_computed_image():
    # One row, one channel, 2x3 image:
    #   0.0 0.5 0.5
    #   1.0 0.5 0.0
    # vertical differences: 1.0, 0.0, -0.5         -> |.|^2 mean = (1 + 0 + 0.25) / 3 = 0.41667
    # horizontal differences: 0.5, 0.0, -0.5, -0.5 -> |.|^2 mean = (0.25 + 0 + 0.25 + 0.25) / 4 = 0.1875
    # R_2 = 0.60417;  R_1 = (1 + 0 + 0.5) / 3 + (0.5 + 0 + 0.5 + 0.5) / 4 = 0.5 + 0.375 = 0.875
    x = torch.tensor([[[[0.0, 0.5, 0.5], [1.0, 0.5, 0.0]]]])
    r2 = (1 + 0 + 0.25) / 3 + (0.25 + 0 + 0.25 + 0.25) / 4
    r1 = (1 + 0 + 0.5) / 3 + (0.5 + 0 + 0.5 + 0.5) / 4
    assert TotalVariation(weight=1.0, p=2, unit=1.0)(_ctx(x)).item() == pytest.approx(r2)
    assert TotalVariation(weight=3.0, p=2, unit=0.001)(_ctx(x)).item() == pytest.approx(3.0 * r2 / 0.001)
    assert TotalVariation(weight=2.0, p=1, unit=0.01)(_ctx(x)).item() == pytest.approx(2.0 * r1 / 0.01)
    # the documented default units (tv.yaml: 1e-3 for p=2; tv_l1.yaml: 1e-2 for p=1)
    assert TotalVariation(p=2)(_ctx(x)).item() == pytest.approx(r2 / 1e-3)
    assert TotalVariation(p=1)(_ctx(x)).item() == pytest.approx(r1 / 1e-2)
    # per row: a second, flat row costs nothing and does not change the first row's value
    two = torch.cat([x, torch.full_like(x, 0.3)])
    assert TotalVariation(p=2, unit=1.0)(_ctx(two)).tolist() == pytest.approx([r2, 0.0])


def _roughness(images: torch.Tensor) -> float:
    return float((images[..., 1:, :] - images[..., :-1, :]).abs().mean() + (images[..., :, 1:] - images[..., :, :-1]).abs().mean())


@pytest.mark.parametrize("param", ["pixel", "fourier"])
def test_default_tv_weight_smooths_the_prototypes(tmp_path, param):
    """The documented default weight (1) is a real trade-off: images are clearly smoother than at weight 0."""
    results = {}
    for w in (0.0, 1.0):
        cfg = compose_cfg("generate", [*FAST, f"param={param}", "regularizer=[tv]", "param_ops=[]", f"regularizer.tv.weight={w}",
                                       "schedule.prototype_steps=30"], tmp_path / f"w{w}")
        results[w] = run_generation(cfg)
    assert _roughness(results[1.0].images) <= 0.7 * _roughness(results[0.0].images)


def test_diversity_term_on_hand_made_activations():
    from protoscope.regularizers import Diversity

    # rows 0,1: class 0 with identical activations; row 2: class 0, orthogonal Gram; row 3: class 1 alone
    a = torch.zeros(4, 2, 1, 2)
    a[0, 0] = a[1, 0] = torch.tensor([1.0, 1.0])   # Gram = [[2,0],[0,0]] -> normalised e_00
    a[2, 1] = torch.tensor([1.0, 1.0])             # Gram -> e_11: cosine 0 with rows 0, 1
    a[3, 0] = torch.tensor([3.0, 0.0])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ctx = StepContext(images=torch.zeros(4, 3, 2, 2), inputs=torch.zeros(4, 3, 2, 2), logits=torch.zeros(4, 2),
                      targets=targets, activations={"layer": a})
    got = Diversity(weight=2.0, layer="layer")(ctx)
    # row 0: mean(sim to row 1 = 1, to row 2 = 0) = 0.5; row 1 the same; row 2: 0; row 3: no partner
    assert got.tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
    # the step records the union of every term's layers: diversity reads its own layer only
    ctx.activations["another_terms_layer"] = torch.randn(4, 5)
    assert Diversity(weight=2.0, layer="layer")(ctx).tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])


def test_diversity_weight_spreads_the_seeds_of_a_class(tmp_path):
    from protoscope.metrics import seed_distance
    from protoscope.models import activation_path

    distance = {}
    for w in (0.0, 3.0):
        cfg = compose_cfg("generate", [*FAST, "param=fourier", "classes=[0,1]", "seeds_per_class=3",
                                       "param.init_std=0.001", "regularizer=[diversity]", "param_ops=[]",
                                       f"regularizer.diversity.weight={w}", "regularizer.diversity.layer=stage2",
                                       "schedule.prototype_steps=30", "optimizer.lr=0.1"], tmp_path / f"w{w}")
        res = run_generation(cfg)
        from protoscope.generation.pipeline import prepare

        classifier = prepare(cfg)[0]
        paths = activation_path(classifier, res.images)
        distance[w] = sum(seed_distance(paths, [r.classes[0] for r in res.rows]).values()) / 2
        assert all(r["target_rank"] <= 3 for r in res.records)
    assert distance[3.0] > 1.5 * distance[0.0], distance
