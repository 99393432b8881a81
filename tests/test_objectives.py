"""One objective algebra, and every objective kind of Lucent through protoscope.render (no trainer, no Hydra)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import compose_cfg
from protoscope import render
from protoscope.generation.context import StepContext
from protoscope.errors import CheckpointError, ConfigError
from protoscope.models import load_model
from protoscope.models.hooks import record_activations
from protoscope.objectives import (Antitype, Channel, Direction, LayerEnergy, Logit, Neuron, Sum, Term,
                                   load_direction)
from protoscope.regularizers import Diversity, TotalVariation


@pytest.fixture(scope="module")
def tiny():
    return load_model(compose_cfg("generate", ["model=tiny_cnn"]).model)


@pytest.fixture(scope="module")
def natural() -> torch.Tensor:
    """64 natural 32-px crops of four bundled photos (scikit-image)."""
    from skimage import data

    g = torch.Generator().manual_seed(0)
    crops = []
    for photo in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket()):
        x = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).float()[None] / 255
        for _ in range(16):
            h, w = x.shape[-2:]
            side = int(min(h, w) * (0.3 + 0.7 * torch.rand(1, generator=g).item()))
            top = int(torch.randint(0, h - side + 1, (1,), generator=g))
            left = int(torch.randint(0, w - side + 1, (1,), generator=g))
            crops.append(F.interpolate(x[..., top:top + side, left:left + side], size=32, mode="area"))
    return torch.cat(crops)


def layer_output(classifier, images: torch.Tensor, layer: str) -> torch.Tensor:
    with torch.no_grad(), record_activations(classifier.network, [layer], reduce=None) as store:
        classifier.network(images)
    return store[layer]


def context(logits: torch.Tensor, targets: torch.Tensor, **activations) -> StepContext:
    images = torch.zeros(len(logits), 3, 4, 4)
    return StepContext(images=images, inputs=images, logits=logits, targets=targets, activations=activations)


# ---------------------------------------------------------------- the algebra


def test_terms_compose_per_row_by_plus_minus_and_scalars_and_read_the_union_of_their_layers(tiny):
    g = torch.Generator().manual_seed(0)
    logits, act = torch.randn(5, 10, generator=g), torch.randn(5, 16, 4, 4, generator=g)
    targets = F.one_hot(torch.tensor([0, 1, 2, 3, 4]), 10).float()
    ctx = context(logits, targets, stage2=act)
    logit, channel, energy = Logit(), Channel("stage2", 3), LayerEnergy("stage2")
    loss = logit + 2 * channel - energy / 4
    assert isinstance(loss, Sum) and loss(ctx).shape == (5,)  # every row its own loss, never a scalar
    torch.testing.assert_close(loss(ctx), logit(ctx) + 2 * channel(ctx) - energy(ctx) / 4)
    torch.testing.assert_close((-logit)(ctx), Antitype()(ctx))  # an antitype is the negation
    torch.testing.assert_close(sum([logit, channel])(ctx), logit(ctx) + channel(ctx))
    assert (Channel("stage1", 0) + 0.5 * (channel + Neuron("stage3", 1))).layers(tiny) == ["stage1", "stage2",
                                                                                             "stage3"]
    assert len((logit + channel + energy).terms) == 3  # nested sums flatten
    with pytest.raises(TypeError):
        logit * channel  # noqa: B018 - only scalars scale a term


def test_channel_and_neuron_read_the_right_slice_for_convolutions_and_tokens():
    from protoscope.models.reduce import Reduction

    g = torch.Generator().manual_seed(1)
    conv, tokens = torch.randn(2, 8, 5, 5, generator=g), torch.randn(2, 1 + 9, 6, generator=g)
    ctx = context(torch.zeros(2, 3), torch.zeros(2, 3), conv=conv)
    torch.testing.assert_close(Channel("conv", 4)(ctx), -conv[:, 4].mean((1, 2)))
    torch.testing.assert_close(Neuron("conv", 4)(ctx), -conv[:, 4, 2, 2])
    torch.testing.assert_close(Neuron("conv", 4, position=[0, 3])(ctx), -conv[:, 4, 0, 3])
    vit = context(torch.zeros(2, 3), torch.zeros(2, 3), block=tokens)
    vit.reduction = Reduction("tokens", 1)
    torch.testing.assert_close(Channel("block", 5)(vit), -tokens[:, 1:, 5].mean(1))
    torch.testing.assert_close(Neuron("block", 5)(vit), -tokens[:, 1 + 4, 5])
    with pytest.raises(ConfigError, match="channel 8 is out of range for layer 'conv'"):
        Channel("conv", 8)(ctx)


# ---------------------------------------------------------------- Lucent's objective kinds, rendered


def test_channel_the_rendered_image_activates_its_channel_more_than_any_natural_image(tiny, natural):
    image = render(tiny, Channel("stage2", 5) + 0.001 * TotalVariation(), steps=60, param="fourier",
                   transform="s", progress=False)
    mean = lambda x: layer_output(tiny, x, "stage2")[:, 5].mean((1, 2))  # noqa: E731
    assert image.shape == (1, 3, 32, 32)
    assert mean(image).item() > mean(natural).max().item()


def test_neuron_the_rendered_image_drives_its_neuron_above_every_natural_image(tiny, natural):
    image = render(tiny, Neuron("stage2", 2), steps=60, param="pixel", transform="none", progress=False)
    value = lambda x: layer_output(tiny, x, "stage2")[:, 2, 4, 4]  # noqa: E731 - the centre of 8x8
    assert value(image).item() > value(natural).max().item()


def test_direction_from_a_file_the_rendered_image_projects_on_it_more_than_any_natural_image(tiny, natural,
                                                                                            tmp_path):
    vector = torch.randn(32, generator=torch.Generator().manual_seed(3))
    torch.save({"direction": vector}, tmp_path / "probe.pt")
    torch.testing.assert_close(load_direction(tmp_path / "probe.pt"), vector)
    image = render(tiny, Direction("stage3", path=tmp_path / "probe.pt"), steps=60, param="pixel",
                   transform="none", progress=False)
    project = lambda x: layer_output(tiny, x, "stage3").mean((2, 3)) @ (vector / vector.norm())  # noqa: E731
    assert project(image).item() > project(natural).max().item()
    (tmp_path / "bad.pt").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match="cannot read the direction file"):
        Direction("stage3", path=tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="layer 'stage2' has 16 dimensions per image, the direction has 32"):
        render(tiny, Direction("stage2", vector), steps=1, progress=False)


def test_deepdream_layer_energy_rises_above_the_starting_image_and_every_natural_image(tiny, natural):
    energy = lambda x: layer_output(tiny, x, "stage1").pow(2).flatten(1).mean(1)  # noqa: E731
    start = render(tiny, LayerEnergy("stage1"), steps=0, param="pixel", progress=False)
    image = render(tiny, LayerEnergy("stage1"), steps=40, param="pixel", transform="none", progress=False)
    assert energy(image).item() > 2 * energy(start).item()
    assert energy(image).item() > energy(natural).max().item()


def test_diversity_pushes_the_seeds_of_a_target_apart(tiny):
    targets = F.one_hot(torch.tensor([4, 4]), 10).float()
    gram_cos = {}
    for weight in (0.0, 50.0):
        images = render(tiny, Logit(), penalties={"diversity": Diversity(weight, layer="stage2")}, rows=2,
                        targets=targets, steps=40, param="pixel", transform="none", progress=False)
        act = layer_output(tiny, images, "stage2").flatten(2)
        gram = (act @ act.transpose(1, 2)).flatten(1)
        gram = gram / gram.norm(dim=1, keepdim=True)
        gram_cos[weight] = (gram[0] @ gram[1]).item()
    assert gram_cos[50.0] < gram_cos[0.0] - 0.01


def test_render_takes_a_plain_network_and_is_reproducible():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3))
    a = render(net, Logit(), size=16, steps=5, targets=torch.eye(3)[[1]], progress=False)
    b = render(net, Logit(), size=16, steps=5, targets=torch.eye(3)[[1]], progress=False)
    assert a.shape == (1, 3, 16, 16) and torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown param 'spiral': choose from fourier, maco, pixel"):
        render(net, Logit(), size=16, steps=1, param="spiral", progress=False)
    assert isinstance(Logit(), Term)
