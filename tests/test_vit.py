"""Vision transformers measured right: a block's [B, tokens, dim] output becomes a vector by its mean over
the patch tokens (the class token left out), never by a spatial mean over the embedding."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import FAST, compose_cfg
from protoscope.errors import ConfigError
from protoscope.models import load_model
from protoscope.models.hooks import activation_path
from protoscope.models.reduce import Reduction
from protoscope.reference.stats import cache_key

pytest.importorskip("timm", reason="model=timm needs timm: pip install -e '.[timm]'")

TINY_VIT = ["model=timm", "model.arch.name=vit_tiny_patch16_224", "+model.arch.img_size=32",
            "+model.arch.patch_size=8", "+model.arch.num_classes=10", "+model.arch.depth=2",
            "model.input_size=32", "model.class_names=null", "model.num_classes=10"]
FAST_VIT = ["model=timm", *(o for o in FAST if not o.startswith("model=")), *TINY_VIT[1:]]  # the fast run on it


@pytest.fixture(scope="module")
def vit():
    return load_model(compose_cfg("generate", TINY_VIT).model)


def test_a_block_is_reduced_over_its_patch_tokens_as_an_independent_hook_sees_it(vit):
    assert vit.layer_names == ["blocks.0", "blocks.1", "logits"]  # the path layers of a ViT are its blocks
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = {}
    block = vit.network.net.blocks[1]
    handle = block.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o.detach().clone()))
    try:
        path = activation_path(vit, images)
    finally:
        handle.remove()
    out = seen["out"]
    assert out.shape == (4, 1 + 16, 192)  # class token + 4x4 patches, embedding 192
    assert path["blocks.1"].shape == (4, 192)  # one value per embedding dimension, not per token
    torch.testing.assert_close(path["blocks.1"], out[:, 1:].mean(1))
    assert not torch.allclose(path["blocks.1"], out.mean(1))  # the class token is left out


def test_the_spatial_mean_on_a_transformer_block_is_an_error_naming_the_setting(vit):
    spatial = replace(vit, reduction=Reduction("spatial"))
    with pytest.raises(ConfigError, match=r"'blocks.0' outputs shape \[2, 17, 192\].*model.reduction.kind=tokens"):
        activation_path(spatial, torch.rand(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="model.reduction.kind='mean'"):
        Reduction("mean")


def test_the_reduction_is_part_of_the_reference_cache_key(vit):
    keys = {cache_key(replace(vit, reduction=r), "photos", 50, 0)
            for r in (Reduction("tokens", 1), Reduction("tokens", 0))}
    assert len(keys) == 2


def test_a_cnn_keeps_the_spatial_mean():
    cnn = load_model(compose_cfg("generate", ["model=tiny_cnn"]).model)
    images = torch.rand(3, 3, 32, 32)
    seen = {}
    handle = cnn.network.net.stage2.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o.detach()))
    try:
        path = activation_path(cnn, images)
    finally:
        handle.remove()
    assert cnn.reduction == Reduction("spatial", 0)
    torch.testing.assert_close(path["stage2"], seen["out"].mean((2, 3)))


def test_generation_on_a_vit_makes_every_class_top1(tmp_path):
    from protoscope.generation.pipeline import run_generation

    cfg = compose_cfg("generate", [*FAST_VIT, "schedule.prototype_steps=30",
                                   "regularizer=[tv]", "regularizer.tv.weight=0.01", "param_ops=[]"], tmp_path)
    result = run_generation(cfg)
    assert [r["target_rank"] for r in result.records] == [1, 1, 1]


def test_protoscope_train_keeps_a_fashion_vit_that_model_fashion_vit_selects_and_generates_with(tmp_path, monkeypatch):
    """model=fashion_vit works like fashion_cnn: protoscope-train keeps fashion_vit-<hash>.pt in the models
    folder, model.name=<hash> loads exactly those weights, and generation runs and scores with them."""
    import json

    from conftest import compose_cfg
    from synthetic import CLASSES, make_reference_folder
    from protoscope.generation.pipeline import run_generation
    from protoscope.training import train

    monkeypatch.setenv("PROTOSCOPE_MODELS", str(tmp_path / "models"))
    root = make_reference_folder(tmp_path / "photos")  # 3 classes of smooth patterns, 10 images each
    three = ["model.arch.num_classes=3", "model.class_names=['0','1','2']"]
    trained = train(compose_cfg("train", [
        "model=fashion_vit", *three, "train_data=image_folder", f"train_data.root={root}", "batch_size=8",
        "epochs=2", "logger=none", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"],
        tmp_path / "train"))
    digest = trained.metrics["model_hash"]
    assert trained.files["stored"] == tmp_path / "models" / f"fashion_vit-{digest}.pt"

    cfg = compose_cfg("generate", ["model=fashion_vit", *three, f"model.name='{digest}'", "classes=all",
                                   "param=pixel", "schedule.baseline_steps=2", "schedule.prototype_steps=8",
                                   "logger=none", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                                   "checkpoint_every=0"], tmp_path / "gen")
    result = run_generation(cfg)
    record = json.loads((tmp_path / "gen" / "run.json").read_text())
    assert record["model"]["hash"] == digest and record["model"]["file"] == str(trained.files["stored"])
    vit = load_model(cfg.model)
    assert vit.layer_names == ["blocks.0", "blocks.1", "blocks.2", "blocks.3", "logits"]
    kept = torch.load(trained.files["stored"], weights_only=True)
    assert all(torch.equal(kept[k], v) for k, v in vit.network.net.state_dict().items())
    with torch.no_grad():  # the records score the prototypes with exactly these weights
        probs = vit.network(result.images).softmax(1)
    targets = torch.tensor([int(c) for c in CLASSES])
    torch.testing.assert_close(torch.tensor([r["target_prob"] for r in result.records]),
                               probs[torch.arange(len(targets)), targets], atol=1e-5, rtol=1e-4)


def test_batch_norm_terms_on_a_model_without_batch_norms_stop_or_are_left_out(tmp_path, caplog):
    """Asked for by name they stop the run before the first step; the default recipe (experiment=natural, whose
    batch-norm terms say without_batch_norms=skip) leaves them out with a warning and runs the rest."""
    from protoscope.generation.pipeline import build_module, prepare, run_generation

    cfg = compose_cfg("generate", [*FAST_VIT, "regularizer=[tv,bn_stats]", "classes=[0]"], tmp_path / "named")
    with pytest.raises(ConfigError, match=r"bn_stats.*has no batch norms .*regularizer=\[tv\]"):
        run_generation(cfg)
    assert not (tmp_path / "named" / "prototypes.pt").exists()

    assert compose_cfg("generate", []).tag == "natural"  # the default recipe
    cfg = compose_cfg("generate", [*FAST_VIT, "experiment=natural", "classes=[0]"], tmp_path / "default")
    assert {"bn_stats", "bn_layers", "pixel_prior"} <= set(cfg.regularizer)
    with caplog.at_level("WARNING", logger="protoscope"):
        assert sorted(build_module(cfg, *prepare(cfg)).renderer.regularizers) == ["pixel_prior", "tv"]
        result = run_generation(cfg)
    assert "runs without its batch-norm terms (bn_stats, bn_layers)" in caplog.text
    assert len(result.records) == 1 and (tmp_path / "default" / "prototypes.pt").exists()
