"""Parameter operations (blur): what they do to the image, when their schedule fires, and that the step
loops (PrototypeModule and render) apply them exactly as a hand-written loop does."""

from __future__ import annotations

import pytest
import torch

from conftest import FAST, compose_cfg
from protoscope import render
from protoscope.errors import ConfigError
from protoscope.generation.pipeline import build_module, prepare, run_generation
from protoscope.hydra_utils import build
from protoscope.models import load_model
from protoscope.objectives import Logit
from protoscope.params import Blur, FourierParam, MacoParam, PixelParam
from protoscope.params.base import gaussian_blur


@pytest.mark.parametrize("param_cls", [PixelParam, FourierParam])
@pytest.mark.parametrize("channels", [1, 3])
def test_blur_acts_on_the_image_in_0_1(param_cls, channels):
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    param = param_cls(2, channels, 15, gens, init_std=0.5)
    before = param().detach()
    Blur(sigma=0.8, every=1)(param, "prototype", 0)
    assert torch.allclose(param().detach(), gaussian_blur(before, 0.8), atol=1e-5)
    again = param().detach()
    Blur(sigma=0.8, every=2)(param, "prototype", 0)  # only after every 2nd step
    Blur(sigma=0.8, every=1)(param, "baseline", 0)  # only in the prototype stage
    Blur(sigma=0.0, every=1)(param, "prototype", 0)  # sigma 0: off
    assert torch.equal(param().detach(), again)


def test_blur_on_maco_keeps_its_magnitude_and_smooths():
    param = MacoParam(1, 3, 32, [torch.Generator().manual_seed(0)])
    rough = lambda x: float((x[..., 1:, :] - x[..., :-1, :]).abs().mean())  # noqa: E731
    before = param().detach()
    Blur(sigma=1.5, every=1)(param, "prototype", 0)
    assert rough(param().detach()) < rough(before)


@pytest.mark.parametrize("schedule, stage, expected", [
    (dict(every=4), "prototype", [3, 7, 11]),
    (dict(every=4), "baseline", []),
    (dict(every=3, stage="all"), "baseline", [2, 5, 8, 11]),
    (dict(every=2, start=5, stop=10), "prototype", [6, 8]),
    (dict(every=1, stage="baseline", stop=3), "baseline", [0, 1, 2]),
    (dict(every=0), "prototype", []),
])
def test_schedule_fires_after_the_documented_steps(schedule, stage, expected):
    op = Blur(**schedule)
    assert [s for s in range(12) if op.due(stage, s)] == expected


def test_bad_schedule_fails_early_with_the_fix():
    with pytest.raises(ConfigError, match="choose one of baseline, prototype, all"):
        Blur(stage="prototypes")
    with pytest.raises(ConfigError, match="sigma must be >= 0"):
        Blur(sigma=-1)


def hand_written_loop(cfg, blur_after) -> torch.Tensor:
    """The optimisation of ``cfg`` step by step, with the image blurred (sigma 0.5) after step g when
    ``blur_after(g)``: the loop PrototypeModule ran while blur was a regulariser, written out."""
    classifier, rows, size = prepare(cfg)
    plain = cfg.copy()
    plain.param_ops = None  # the module applies no op
    module = build_module(plain, classifier, rows, size)
    module.shard()
    renderer, param, schedule = module.renderer, module.param, module.schedule
    optimizer = build(cfg.optimizer)(param.parameters())
    for g in range(schedule.total_steps):
        baseline = g < schedule.baseline_steps
        optimizer.zero_grad(set_to_none=True)
        u = module.transform_random(g, torch.device("cpu")) if not baseline else None
        torch.stack(list(renderer.losses(param, u, module._targets, baseline).values())).sum().backward()
        optimizer.step()
        if blur_after(g):
            with torch.no_grad():
                param.set_images_(gaussian_blur(param(), 0.5))
    return param().detach()


@pytest.mark.parametrize("overrides, blur_after", [
    # the default recipe (param_ops=[blur]): after every 4th prototype step, i.e. steps 5, 9, ... of 3 + 13
    ([], lambda g: g >= 3 and (g - 3 + 1) % 4 == 0),
    (["param_ops.blur.stage=all", "param_ops.blur.every=2", "param_ops.blur.stop=6"],
     lambda g: (g < 3 and g % 2 == 1) or (g >= 3 and g - 3 < 6 and (g - 3) % 2 == 1)),
])
def test_generation_blurs_exactly_where_the_schedule_says(tmp_path, overrides, blur_after):
    cfg = compose_cfg("generate", [*FAST, "param=fourier", "schedule.baseline_steps=3", "schedule.prototype_steps=13",
                                   *overrides], tmp_path)
    images = run_generation(cfg).images
    assert torch.equal(images, hand_written_loop(cfg, blur_after))
    assert not torch.equal(images, hand_written_loop(cfg, lambda g: False))  # the blur changed the prototypes


def test_render_applies_param_ops_after_its_steps():
    net = load_model(compose_cfg("generate", FAST).model)
    common = dict(steps=3, size=16, param="pixel", transform="none", targets=torch.eye(10)[[1]], progress=False)
    plain = render(net, Logit(), **common)
    blurred = render(net, Logit(), param_ops=[Blur(sigma=0.8, every=3)], **common)  # after the 3rd (last) step
    torch.testing.assert_close(blurred, gaussian_blur(plain, 0.8), atol=1e-5, rtol=0)
