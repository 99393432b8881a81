"""How fast a step runs, never what it computes: mixed precision, channels-last, folded batch norms,
activation hooks installed once, and the settings that cannot work."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from conftest import FAST, compose_cfg
from protoscope.errors import ConfigError
from protoscope.models.fold import fold_batchnorm
from protoscope.generation.pipeline import build_module, prepare, run_generation
from protoscope.validation import validate_generate
from test_sharding import run


def test_bf16_true_with_fourier_is_refused_before_start_up_and_bf16_mixed_keeps_the_parameters_fp32(tmp_path):
    for precision in ("bf16-true", "16-true"):
        cfg = compose_cfg("generate", [*FAST, "param=fourier", f"trainer.precision={precision}"])
        with pytest.raises(ConfigError, match=rf"trainer.precision={precision} with param=fourier: .*use "
                                              r"trainer.precision=bf16-mixed"):
            validate_generate(cfg, multirun=False)
    validate_generate(compose_cfg("generate", [*FAST, "param=pixel", "trainer.precision=bf16-true"]), multirun=False)

    dtypes: dict[str, set] = {"logits": set(), "param": set(), "state": set()}

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            dtypes["param"] |= {p.dtype for p in pl_module.param.parameters()}
            dtypes["state"] |= {v.dtype for s in trainer.optimizers[0].state.values() for k, v in s.items()
                                if k != "step"}

    cfg = compose_cfg("generate", [*FAST, "param=fourier", "trainer.precision=bf16-mixed"], tmp_path)
    validate_generate(cfg, multirun=False)
    classifier, _, _ = prepare(cfg)
    handle = classifier.network.net.register_forward_hook(lambda m, i, o: dtypes["logits"].add(o.dtype))
    import protoscope.generation.pipeline as pipeline_py

    original = pipeline_py.prepare
    pipeline_py.prepare = lambda c: (classifier, *original(c)[1:])
    try:
        result = run_generation(cfg, callbacks=[Watch()])
    finally:
        pipeline_py.prepare = original
        handle.remove()
    assert torch.bfloat16 in dtypes["logits"]  # the network ran in bf16
    assert dtypes["param"] == {torch.float32} and dtypes["state"] == {torch.float32}
    assert torch.isfinite(result.images).all()


def test_channels_last_gives_the_same_prototypes(tmp_path):
    plain = run(tmp_path / "plain", "speed.channels_last=false")
    last = run(tmp_path / "last", "speed.channels_last=true")
    torch.testing.assert_close(last.images, plain.images, atol=1e-4, rtol=0)


def test_activation_hooks_are_installed_once_per_run_not_per_step(tmp_path, monkeypatch):
    calls: list[str] = []
    original = nn.Module.register_forward_hook

    def counting(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "register_forward_hook", counting)
    run(tmp_path, "regularizer=[tv,diversity,bn_stats]", "regularizer.tv.weight=0.03", "seeds_per_class=2")
    # 12 steps; one hook for diversity's layer (stage2) and one on each of the 4 batch-norm layers, once
    assert sorted(calls) == ["BatchNorm2d"] * 4 + ["Sequential"]


@pytest.mark.parametrize("model", ["tiny_cnn", "efficientnet_lite0"])
def test_folded_batch_norms_give_the_same_logits_and_input_gradients_with_less_work(model):
    overrides = ["model=tiny_cnn"] if model == "tiny_cnn" else ["model=efficientnet_lite0", "image_size=64"]
    classifier = prepare(compose_cfg("generate", [*FAST, *overrides]))[0]
    network = classifier.network
    folded, count = fold_batchnorm(network, 32 if model == "tiny_cnn" else 64)
    batchnorms = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    assert count == len(batchnorms) > 0  # every conv -> batch-norm pair (efficientnet: 'same'-padding convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(isinstance(m, nn.BatchNorm2d) for m in batchnorms)  # the classifier itself is untouched
    x = torch.rand(3, 3, 32 if model == "tiny_cnn" else 64, 32 if model == "tiny_cnn" else 64, requires_grad=True)
    grads = []
    for net in (network, folded):
        out = net(x)
        (g,) = torch.autograd.grad(out[:, 1].sum(), x)
        grads.append((out.detach(), g))
    scale = grads[0][0].abs().max()
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-4 * float(scale), rtol=1e-4)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-4 * float(grads[0][1].abs().max()), rtol=1e-3)


def test_folding_changes_nothing_in_the_prototypes(tmp_path):
    folded = run(tmp_path / "folded", "speed.fold_batchnorm=true", "optimizer=sgd", "optimizer.lr=0.1")
    plain = run(tmp_path / "plain", "speed.fold_batchnorm=false", "optimizer=sgd", "optimizer.lr=0.1")
    torch.testing.assert_close(folded.images, plain.images, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scope", ["row", "batch"])
def test_batch_norm_terms_read_a_folded_network_and_give_the_same_losses_and_gradients(scope):
    """bn_stats and bn_layers on a network with folded batch norms read each folded batch norm's output and
    map its moments back to its input's: the same losses and input gradients as unfolded (EfficientNet-Lite0,
    whose running statistics and affine weights are far from the identity)."""
    from protoscope.generation.renderer import Renderer
    from protoscope.generation.speed import SpeedSettings
    from protoscope.objectives import Logit
    from protoscope.regularizers import BatchNormStats, LayerBatchNormStats
    from protoscope.transforms import RandomAffine

    classifier = prepare(compose_cfg("generate", [*FAST, "model=efficientnet_lite0", "image_size=64"]))[0]
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = torch.zeros(2, classifier.num_classes)
    targets[:, 1] = 1
    results = []
    for fold in (True, False):
        terms = {"bn_stats": BatchNormStats(1.0, scope=scope, tolerance=0.5),
                 "bn_layers": LayerBatchNormStats(1.0, scope=scope)}
        renderer = Renderer(classifier, Logit(), terms, RandomAffine(), SpeedSettings(fold_batchnorm=fold))
        renderer.prepare(torch.device("cpu"), 64)
        assert (renderer.folded_network is not None) == fold
        image = x.clone().requires_grad_(True)
        losses = renderer.losses(lambda: image, None, targets)
        grads = [torch.autograd.grad(losses[name].sum(), image, retain_graph=True)[0] for name in terms]
        results.append(([losses[name].detach() for name in terms], grads))
        renderer._tap.remove()
    (folded_losses, folded_grads), (plain_losses, plain_grads) = results
    for folded, plain in zip(folded_losses + folded_grads, plain_losses + plain_grads):
        torch.testing.assert_close(folded, plain, atol=1e-3 * float(plain.abs().max()), rtol=1e-3)
    assert min(float(loss.min()) for loss in plain_losses) > 0.1  # far from the statistics: the maps matter


def test_one_row_per_call_gives_every_term_the_activations_of_its_own_row(tmp_path):
    """speed.batch_invariant runs the network row by row; terms that read activations (diversity, bn_stats)
    see them concatenated in row order, so every per-row loss and gradient equals the batched one."""
    from protoscope.generation.pipeline import build_module

    overrides = [*FAST, "seeds_per_class=2", "regularizer=[tv,diversity,bn_stats]"]
    losses, grads = {}, {}
    for invariant in (False, True):
        cfg = compose_cfg("generate", [*overrides, f"speed.batch_invariant={invariant}"], tmp_path)
        classifier, rows, size = prepare(cfg)
        module = build_module(cfg, classifier, rows, size)
        module.shard()
        u = module.transform_random(0, torch.device("cpu"))
        terms = module.renderer.losses(module.param, u, module._targets)
        assert set(terms) == {"objective", "tv", "diversity", "bn_stats"}
        losses[invariant] = torch.stack(list(terms.values()))  # [terms, rows]
        grads[invariant] = torch.autograd.grad(losses[invariant].sum(), list(module.param.parameters()))[0]
    assert losses[False].shape == (4, len(rows)) and losses[False][2].abs().sum() > 0  # diversity acts
    torch.testing.assert_close(losses[True], losses[False], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[True], grads[False], atol=1e-6, rtol=1e-4)
