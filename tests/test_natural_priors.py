"""The data-free naturalness priors of experiment=natural, against hand computations."""

from __future__ import annotations

import pytest
import torch

from protoscope.generation.context import StepContext
from protoscope.regularizers import BatchNormStats, LayerBatchNormStats, PixelPrior


def context(images=None, bn=None) -> StepContext:
    images = images if images is not None else torch.full((1, 3, 4, 4), 0.5)
    return StepContext(images=images, inputs=images, logits=torch.zeros(len(images), 2),
                       targets=torch.zeros(len(images), 2), bn_inputs=bn or {})


def test_layer_batch_norm_stats_is_scale_free_and_weighted_per_layer():
    # layer a: values 1 and 3 (mean 2, std 1) against running mean 0, var 4 -> (2^2 + (1-2)^2) / 4 = 1.25
    a = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
    # layer b: the same shape of mismatch at 100x the scale (mean 200, std 100 vs 0, var 40000) -> also 1.25
    b = 100 * a
    # layer c: matches its running statistics exactly -> 0
    c = torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2)
    bn = {"a": (a, torch.zeros(1), torch.full((1,), 4.0)), "b": (b, torch.zeros(1), torch.full((1,), 4e4)),
          "c": (c, torch.zeros(1), torch.ones(1))}
    uniform = LayerBatchNormStats(weight=2.0)(context(bn=bn))
    assert float(uniform) == pytest.approx(2.0 * (1.25 + 1.25 + 0) / 3)
    # first=4, decay=0.5: weights 4, 1, 0.5 (normalised)
    weighted = LayerBatchNormStats(weight=1.0, first=4.0, decay=0.5)(context(bn=bn))
    assert float(weighted) == pytest.approx((4 * 1.25 + 1 * 1.25 + 0.5 * 0) / 5.5)
    # mean=0.25: layer a's mean cost 2^2/4 = 1 counts a quarter, its spread cost 0.25 in full -> 0.5 per layer
    freer = LayerBatchNormStats(weight=1.0, mean=0.25)(context(bn=bn))
    assert float(freer) == pytest.approx((0.5 + 0.5 + 0) / 3)
    with pytest.raises(ValueError, match="mean"):
        LayerBatchNormStats(mean=-1.0)


@pytest.mark.parametrize("scope", ["row", "batch"])
def test_a_constant_channel_gives_finite_gradients(scope):
    """A channel without spread (a dead unit, or a folded batch norm's output rounded to its shift) has
    variance 0, where the spread cost's square root has no finite slope: the terms must not return NaN."""
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x[:, 1] = 0.5
    x.requires_grad_(True)
    bn = {"bn": (x, torch.zeros(3), torch.ones(3))}
    for term in (LayerBatchNormStats(scope=scope), BatchNormStats(scope=scope)):
        (grad,) = torch.autograd.grad(term(context(bn=bn)).sum(), x)
        assert torch.isfinite(grad).all()
        assert grad[:, 0].abs().sum() > 0  # the other channels still pull


def test_batch_scope_matches_the_statistics_of_all_rows_together():
    # row 0 holds 1 and 3, row 1 holds 5 and 7: rows' means 2 and 6 (variance 1 each); together mean 4, variance 5
    x = torch.tensor([[1.0, 3.0], [5.0, 7.0]]).view(2, 1, 1, 2)
    bn = {"a": (x, torch.full((1,), 4.0), torch.full((1,), 5.0))}
    per_row = BatchNormStats(weight=1.0)(context(torch.zeros(2, 1, 2, 2), bn=bn))
    assert per_row.tolist() == pytest.approx([2.0 + 4.0, 2.0 + 4.0])  # |2-4| + |1-5|, |6-4| + |1-5|
    together = BatchNormStats(weight=1.0, scope="batch")(context(torch.zeros(2, 1, 2, 2), bn=bn))
    assert together.tolist() == pytest.approx([0.0, 0.0])  # the two rows jointly match the running statistics
    layers = LayerBatchNormStats(weight=1.0, scope="batch")(context(torch.zeros(2, 1, 2, 2), bn=bn))
    assert layers.tolist() == pytest.approx([0.0, 0.0])
    with pytest.raises(ValueError, match="scope"):
        BatchNormStats(scope="class")


def test_tolerance_frees_channel_means_within_that_many_running_deviations():
    # one row, two channels with running mean 0 and running sd 2: channel means 1 (0.5 sd off) and -5 (2.5 sd off)
    x = torch.tensor([[[[1.0, 1.0]], [[-4.0, -6.0]]]])  # [1, 2, 1, 2]; spreads 0 and 1
    bn = {"a": (x, torch.zeros(2), torch.full((2,), 4.0))}
    pinned = BatchNormStats(weight=1.0)(context(bn=bn))
    spread_cost = torch.tensor([0.0 - 4.0, 1.0 - 4.0]).norm()
    assert float(pinned) == pytest.approx(float(torch.tensor([1.0, -5.0]).norm() + spread_cost))
    # tolerance 1 (2 units here): channel 0 lies inside and costs nothing, channel 1 costs its excess 5 - 2 = 3
    freed = BatchNormStats(weight=1.0, tolerance=1.0)(context(bn=bn))
    assert float(freed) == pytest.approx(3.0 + float(spread_cost))
    # the scale-free term: mean cost (excess / sd)^2 = (0, 1.5^2), spread cost ((0-2)/2)^2 and ((1-2)/2)^2
    layers = LayerBatchNormStats(weight=1.0, tolerance=1.0)(context(bn=bn))
    assert float(layers) == pytest.approx(((0 + 1.0) + (1.5 ** 2 + 0.25)) / 2)
    with pytest.raises(ValueError, match="tolerance"):
        BatchNormStats(tolerance=-0.5)


def test_pixel_prior_counts_values_near_the_ends_and_the_colour_spread():
    x = torch.full((1, 3, 2, 2), 0.5)
    x[0, 0, 0, 0] = 0.0   # 0.02 inside the margin: 1 margin unit
    x[0, 1, 0, 0] = 0.99  # 0.01 inside: 0.5 units
    prior = PixelPrior(weight=1.0, clip=1.0, margin=0.02, spread=0.0)
    assert float(prior(context(x))) == pytest.approx(1.5 / 12)
    spread = x.flatten(2).std(-1, unbiased=False).mean(1)
    only_spread = PixelPrior(weight=3.0, clip=0.0, spread=1.0, target=0.25)
    assert float(only_spread(context(x))) == pytest.approx(float(3.0 * ((spread - 0.25) / 0.25) ** 2))
    with pytest.raises(ValueError, match="margin"):
        PixelPrior(margin=0.6)
