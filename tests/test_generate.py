"""End-to-end generation on a tiny model: every config choice, reproducibility, row independence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import FAST, compose_cfg
from protoscope.errors import ConfigError
from protoscope.generation.module import Schedule
from protoscope.generation.pipeline import build_module, prepare, run_generation
from protoscope.regularizers import roughness

GROUP_CHOICES = [
    "param=pixel", "param=fourier", "param=maco", "param.decorrelate=false",
    "transform=none", "transform=s", "transform=m", "transform=l", "transform=xl", "transform=lucent_style",
    "regularizer=[tv]", "regularizer=[tv_l1]", "regularizer=[l2]", "regularizer=[bn_stats]",
    "regularizer=[]", "regularizer=[tv,l2,bn_stats]", "param_ops=[blur]", "param_ops=none",
    "objective=logit", "objective=log_prob", "objective=antitype",
    "schedule=paper", "schedule=no_baseline", "schedule=long",
    "optimizer=adam", "optimizer=adamw",
    "trainer=cpu", "logger=csv",
]


def run(tmp_path: Path, *overrides: str):
    # The random tiny model's target logits are ~1 (a trained model's: 5-50) and depend on pixel noise,
    # so L_hf at its default weight and the blur would outweigh them in these few steps; these tests
    # are about the other choices (tests/test_regularizers.py and test_param_ops.py check L_hf and blur).
    if not any(o.startswith("param_ops=") for o in overrides):
        overrides = ("param_ops=[]", *overrides)
    stack = [o for o in overrides if o.startswith("regularizer=")]
    if not stack:
        overrides = ("regularizer=[tv]", "regularizer.tv.weight=0.03", *overrides)
    elif "tv" in stack[0]:
        overrides = (*overrides, "regularizer.tv.weight=0.03")
    cfg = compose_cfg("generate", [*FAST, *overrides], tmp_path)
    return cfg, run_generation(cfg)


def initial_logits(cfg):
    classifier, rows, size = prepare(cfg)
    module = build_module(cfg, classifier, rows, size)
    with torch.no_grad():
        module.shard()  # one process, all rows: the parameterisation as the first step sees it
        return classifier.network(module.param()), rows


@pytest.mark.parametrize("choice", GROUP_CHOICES)
def test_every_config_choice_runs_and_moves_the_target_logit(tmp_path, choice):
    overrides = [choice]
    if choice == "schedule=long":  # same composition, fewer steps
        overrides += ["schedule.baseline_steps=2", "schedule.prototype_steps=10"]
    if choice in ("param=fourier", "param=maco"):  # low frequencies first: the random tiny model needs more steps
        overrides += ["schedule.prototype_steps=30"]
    cfg, result = run(tmp_path, *overrides, "optimizer.lr=0.1")
    before, rows = initial_logits(cfg)
    after = torch.tensor([r["target_logit"] for r in result.records])
    start = before[torch.arange(len(rows)), [r.classes[0] for r in rows]]
    if "antitype" in choice:
        assert (after < start).all(), (after, start)
    else:
        assert (after > start).all(), (after, start)
    saved = torch.load(tmp_path / "prototypes.pt", weights_only=True)
    assert saved["images"].shape == (3, 3, 32, 32)
    assert 0.0 <= float(saved["images"].min()) and float(saved["images"].max()) <= 1.0
    assert saved["class_indices"] == [0, 1, 2] and saved["seeds"] == [0, 0, 0]
    assert len(list((tmp_path / "prototypes").glob("*.png"))) == 3


def test_hybrid_objective_raises_both_classes(tmp_path):
    cfg, result = run(tmp_path, "objective=hybrid", "classes=[0+1]", "optimizer.lr=0.1", "schedule.prototype_steps=30")
    before, _ = initial_logits(cfg)
    after = torch.load(tmp_path / "prototypes.pt", weights_only=True)["images"]
    classifier, _, _ = prepare(cfg)
    with torch.no_grad():
        logits = classifier.network(after)
    assert (logits[0, [0, 1]] > before[0, [0, 1]]).all()
    assert result.records[0]["class_index"] == "0+1"
    assert result.records[0]["class_name"] == "class_0+class_1"


def test_outputs_and_metrics_files(tmp_path):
    _, result = run(tmp_path, "seeds_per_class=2")
    records = json.loads((tmp_path / "metrics.json").read_text())
    assert [(r["class_index"], r["seed_index"]) for r in records] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert {r["seed"] for r in records} == {0}  # the run's base seed
    for rec in records:
        assert {"class_index", "class_name", "seed", "seed_index", "target_logit", "target_prob",
                "target_rank"} <= set(rec)
        assert 1 <= rec["target_rank"] <= 10 and 0 <= rec["target_prob"] <= 1
        assert (tmp_path / rec["file"]).is_file()
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["class_index", "class_name", "seed", "seed_index", "target_logit", "target_prob", "target_rank"]
    assert (tmp_path / "grid.png").stat().st_size > 1000
    assert "tiny_cnn" in (tmp_path / "config.yaml").read_text()
    # metrics are measured on the saved images, without transforms
    cfg = compose_cfg("generate", FAST, tmp_path)
    classifier, _, _ = prepare(cfg)
    images = torch.load(tmp_path / "prototypes.pt", weights_only=True)["images"]
    with torch.no_grad():
        probs = classifier.network(images).softmax(-1)
    expected = [float(probs[i, r["class_index"]]) for i, r in enumerate(records)]
    assert [r["target_prob"] for r in records] == pytest.approx(expected, abs=1e-5)


def test_same_seed_gives_identical_prototypes(tmp_path):
    _, a = run(tmp_path / "a", "param=fourier", "param_ops=[blur]")
    _, b = run(tmp_path / "b", "param=fourier", "param_ops=[blur]")
    _, c = run(tmp_path / "c", "param=fourier", "param_ops=[blur]", "seed=1")
    assert torch.equal(a.images, b.images)
    assert not torch.allclose(a.images, c.images)


@pytest.mark.parametrize("param", ["pixel", "fourier"])
def test_adding_a_class_leaves_existing_rows_unchanged(tmp_path, param):
    _, small = run(tmp_path / "small", f"param={param}", "classes=[1,3]", "seeds_per_class=2")
    _, big = run(tmp_path / "big", f"param={param}", "classes=[0,1,3,7]", "seeds_per_class=2")
    # rows of classes 1 and 3 sit at positions 2..5 in the bigger batch
    torch.testing.assert_close(big.images[2:6], small.images, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch_invariant", [False, True])
def test_one_batched_forward_per_step_or_one_per_row_when_batch_invariant(tmp_path, batch_invariant):
    cfg = compose_cfg("generate", [*FAST, "seeds_per_class=2", f"speed.batch_invariant={batch_invariant}"], tmp_path)
    classifier, rows, size = prepare(cfg)
    module = build_module(cfg, classifier, rows, size)
    calls: list[int] = []
    handle = classifier.network.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    import pytorch_lightning as pl

    trainer = pl.Trainer(max_steps=8, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module)
    handle.remove()
    assert calls == ([1] * len(rows) if batch_invariant else [len(rows)]) * 8


def test_rows_sharded_over_two_processes_match_one_process(tmp_path):
    """ddp_spawn on CPU (gloo): each rank computes the loss of its rows; the result equals one process."""
    common = ["seeds_per_class=2", "classes=[0,1,2]", "param_ops=[blur]"]
    _, single = run(tmp_path / "one", *common)
    _, sharded = run(tmp_path / "two", *common, "trainer=ddp_spawn", "trainer.accelerator=cpu")
    torch.testing.assert_close(sharded.images, single.images, atol=1e-4, rtol=0)
    assert [r["target_prob"] for r in sharded.records] == pytest.approx([r["target_prob"] for r in single.records], abs=1e-4)


def test_interrupted_run_resumes_to_the_same_prototypes(tmp_path, monkeypatch):
    common = ["checkpoint_every=4", "schedule.baseline_steps=2", "schedule.prototype_steps=10"]
    _, full = run(tmp_path / "full", *common)
    assert not (tmp_path / "full" / "checkpoints").exists()  # removed once complete

    from protoscope.generation.module import PrototypeModule

    original = PrototypeModule.training_step

    def crash_at_step_9(self, batch, batch_idx):
        if self.global_step == 9:
            raise KeyboardInterrupt("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(PrototypeModule, "training_step", crash_at_step_9)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        run(tmp_path / "resumed", *common)
    ckpt = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and not (tmp_path / "resumed" / "prototypes.pt").exists()
    assert torch.load(ckpt, weights_only=True)["global_step"] == 8
    monkeypatch.setattr(PrototypeModule, "training_step", original)
    _, resumed = run(tmp_path / "resumed", *common)
    torch.testing.assert_close(resumed.images, full.images, atol=1e-6, rtol=0)


def test_host_syncs_only_at_the_logging_interval(tmp_path, monkeypatch):
    """Reading a tensor's value on the host (item/tolist/bool/float) happens only every log_every steps.

    Adam's own step counter is excluded: torch keeps it on the host (not capturable), so reading it
    never waits for the device.
    """
    import sys

    cfg = compose_cfg("generate", [*FAST, "trainer.log_every_n_steps=6", "schedule.baseline_steps=6",
                                   "schedule.prototype_steps=18"], tmp_path)
    classifier, rows, size = prepare(cfg)
    module = build_module(cfg, classifier, rows, size)
    syncs: list[int] = []
    original_step = module.training_step
    names = ("item", "tolist", "__bool__", "__float__")

    def counted(fn):
        def wrapper(self, *args, **kwargs):
            if "torch/optim" not in sys._getframe(1).f_code.co_filename.replace("\\", "/"):
                syncs.append(module.global_step)
            return fn(self, *args, **kwargs)
        return wrapper

    def counting_step(batch, batch_idx):
        saved = {name: getattr(torch.Tensor, name) for name in names}
        for name, fn in saved.items():
            monkeypatch.setattr(torch.Tensor, name, counted(fn))
        try:
            return original_step(batch, batch_idx)
        finally:
            for name, fn in saved.items():
                monkeypatch.setattr(torch.Tensor, name, fn)

    monkeypatch.setattr(module, "training_step", counting_step)
    import pytorch_lightning as pl

    trainer = pl.Trainer(max_steps=24, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(module)
    # recorded after the optimiser step of steps 5, 11, 17, 23: the end of each logging interval only
    assert sorted(set(syncs)) == [6, 12, 18, 24]


def test_annealed_weight_follows_its_cosine_and_acts(tmp_path):
    schedule = Schedule(baseline_steps=2, prototype_steps=5, anneal={"tv": 0.2})
    factors = [schedule.weight_factor("tv", s) for s in range(7)]
    # baseline steps 0-1 untouched; prototype steps 0..4 at t = 0, 1/4, 1/2, 3/4, 1: 0.2 + 0.8 (1 + cos(pi t)) / 2
    root = 0.5 ** 0.5
    assert factors == pytest.approx([1.0, 1.0, 1.0, 0.2 + 0.4 * (1 + root), 0.6, 0.2 + 0.4 * (1 - root), 0.2])
    assert schedule.weight_factor("bn_stats", 6) == 1.0  # a term not annealed keeps its weight
    # a heavy L_hf annealed to nothing leaves a rougher prototype than the same weight held to the end
    held = run(tmp_path / "held", "regularizer.tv.weight=3", "optimizer.lr=0.1")[1].images
    annealed = run(tmp_path / "annealed", "regularizer.tv.weight=3", "optimizer.lr=0.1",
                   "++schedule.anneal.tv=0.0")[1].images
    assert float(roughness(annealed, 2).mean()) > 1.2 * float(roughness(held, 2).mean())
    with pytest.raises(ConfigError, match="no regulariser named 'blur'"):
        run(tmp_path / "bad", "++schedule.anneal.blur=0.1")
