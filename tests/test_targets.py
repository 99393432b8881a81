"""Rows are (target, seed): protoscope-generate optimises feature targets (channels, neurons, directions, a
layer's energy) as well as classes, through sharding, chunks, resume, records and exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import FAST, compose_cfg
from protoscope.errors import ConfigError, RunInterrupted
from protoscope.generation.pipeline import prepare, run_generation
from protoscope.generation.renderer import evaluate
from protoscope.generation.rows import row_targets
from protoscope.hydra_utils import build
from protoscope.models import load_model
from protoscope.objectives import Channel, Direction, LayerEnergy, Neuron, Sum
from protoscope.records import read_record
from test_studies import InterruptAt

CHANNEL = ["objective=channel", "objective.layer=stage2", "targets=[1,5]", "seeds_per_class=2"]
# Feature activations of the random tiny model are ~0.05-1: L_hf at the class recipe's scale would flatten them.
LIGHT = ["regularizer=[tv]", "param_ops=[]", "regularizer.tv.weight=0.001"]


def run(tmp_path: Path, *overrides: str, callbacks=()):
    """A tiny run without the L_pv stage; L_hf weakened (as in test_sharding) unless overrides set the stack."""
    if not any(o.startswith("regularizer=") for o in overrides):
        overrides = ("regularizer=[tv]", "regularizer.tv.weight=0.03", *overrides)
    overrides = ("schedule.baseline_steps=0", *overrides)
    return run_generation(compose_cfg("generate", [*FAST, *overrides], tmp_path), callbacks=list(callbacks))


@pytest.fixture(scope="module")
def tiny():
    return load_model(compose_cfg("generate", ["model=tiny_cnn"]).model)


@pytest.fixture(scope="module")
def photos(tiny) -> torch.Tensor:
    """The bundled photos reference (conf/reference/bundled_photos.yaml): 7 photos x 8 crops at 32 px."""
    from protoscope.reference import BundledPhotosSource

    source = BundledPhotosSource(crops_per_photo=8)
    return torch.stack([source.load((key, i, 0), tiny) for key in source.photos for i in range(8)])


def score(classifier, term, images: torch.Tensor, index: int) -> torch.Tensor:
    """``term``'s target activation of target ``index`` on every image."""
    return -evaluate(classifier, term, images, torch.full((len(images), 1), index, dtype=torch.long))


# ---------------------------------------------------------------- rows, records, files


def test_each_row_optimises_its_own_channel_above_every_natural_photo_and_the_records_name_it(tmp_path, tiny,
                                                                                               photos):
    result = run(tmp_path, *CHANNEL, *LIGHT, "schedule.prototype_steps=40", "param=fourier", "transform=s")
    assert [(r["target"], r["seed_index"]) for r in result.records] == [
        ("channel 1 of stage2", 0), ("channel 1 of stage2", 1), ("channel 5 of stage2", 0), ("channel 5 of stage2", 1)]
    channel = Channel("stage2")
    images = result.images
    for r, own, other in ((0, 1, 5), (1, 1, 5), (2, 5, 1), (3, 5, 1)):
        mine = score(tiny, channel, images[r:r + 1], own).item()
        assert mine == pytest.approx(result.records[r]["target_activation"], rel=1e-4)
        theirs = score(tiny, channel, images[[i for i in range(4) if result.records[i]["target_index"] == other]], own)
        assert mine > theirs.max().item()  # each row drove its own channel, not the other rows'
        assert mine > score(tiny, channel, photos, own).max().item()  # and beyond every natural photo crop
    assert sorted(p.name for p in (tmp_path / "prototypes").iterdir()) == [
        "channel-1-of-stage2_seed0.png", "channel-1-of-stage2_seed1.png",
        "channel-5-of-stage2_seed0.png", "channel-5-of-stage2_seed1.png"]
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["target", "target_kind", "target_index", "seed", "seed_index", "target_activation"]
    record = read_record(tmp_path)
    assert record["targets"] == ["channel 1 of stage2", "channel 5 of stage2"]
    assert record["metrics"]["target_activation"] == pytest.approx(
        sum(r["target_activation"] for r in result.records) / 4)
    saved = torch.load(tmp_path / "prototypes.pt", weights_only=True)
    assert saved["target_kind"] == "channel" and saved["target_indices"] == [1, 1, 5, 5]
    from protoscope.evaluation.inputs import load_run

    with pytest.raises(ConfigError, match="holds prototypes of channel targets: path similarity compares class"):
        load_run(tmp_path)


def test_a_chunked_channel_run_interrupted_in_its_second_chunk_resumes_to_the_same_images(tmp_path):
    common = [*CHANNEL, "speed.rows_per_chunk=2", "checkpoint_every=5", "checkpoint_minutes=0"]
    full = run(tmp_path / "full", *common)
    with pytest.raises(RunInterrupted, match="at step 16"):
        run(tmp_path / "stopped", *common, callbacks=[InterruptAt(15)])  # step 5 of the second chunk (channel 5)
    state = tmp_path / "stopped" / "checkpoints"
    assert torch.load(state / "last.ckpt", weights_only=True)["protoscope"]["shard"]["done"] == [0]
    resumed = run(tmp_path / "stopped", *common)
    torch.testing.assert_close(resumed.images, full.images, atol=0, rtol=0)
    assert [a["status"] for a in read_record(tmp_path / "stopped")["attempts"]] == ["interrupted", "completed"]
    assert read_record(tmp_path / "stopped")["step"] == 2 * 10  # two chunks (one channel, two seeds each)
    records = json.loads((tmp_path / "stopped" / "metrics.json").read_text())
    assert [r["target"] for r in records] == ["channel 1 of stage2"] * 2 + ["channel 5 of stage2"] * 2
    assert records == json.loads((tmp_path / "full" / "metrics.json").read_text())
    # the chunks are the targets: one per chunk, seeds together (what diversity needs)
    with pytest.raises(ConfigError, match="another config .*targets: \\[1, 5\\] -> \\[1, 6\\]"):
        run(tmp_path / "stopped", *[c for c in common if not c.startswith("targets=")], "targets=[1,6]")


def test_neuron_direction_and_deepdream_rows_optimise_what_they_name(tmp_path, tiny):
    neuron = run(tmp_path / "neuron", "objective=neuron", "objective.layer=stage2", "targets=[0,3]",
                 "schedule.prototype_steps=20", *LIGHT)
    assert [r["target"] for r in neuron.records] == ["neuron 0 (centre) of stage2", "neuron 3 (centre) of stage2"]
    for r, (own, other) in enumerate(((0, 3), (3, 0))):
        term = Neuron("stage2")
        assert score(tiny, term, neuron.images[r:r + 1], own) > score(tiny, term, neuron.images[1 - r:2 - r], own)

    dictionary = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    torch.save(dictionary, tmp_path / "dictionary.pt")
    direction = run(tmp_path / "direction", "objective=direction", "objective.layer=stage3",
                    f"objective.path={tmp_path / 'dictionary.pt'}", "targets=[0,2]", "schedule.prototype_steps=20", *LIGHT)
    assert [r["target"] for r in direction.records] == ["direction 0 of dictionary at stage3",
                                                        "direction 2 of dictionary at stage3"]
    term = Direction("stage3", path=tmp_path / "dictionary.pt")
    projections = -evaluate(tiny, term, direction.images.repeat_interleave(3, 0),
                            torch.arange(3).repeat(2)[:, None]).reshape(2, 3)  # image x direction
    assert projections[0, 0] > projections[1, 0] and projections[1, 2] > projections[0, 2]

    dream = run(tmp_path / "dream", "objective=deepdream", "objective.layer=stage1", "seeds_per_class=2",
                "schedule.prototype_steps=20", *LIGHT)
    start = run(tmp_path / "start", "objective=deepdream", "objective.layer=stage1", "seeds_per_class=2",
                "schedule.prototype_steps=0", *LIGHT)
    assert [r["target"] for r in dream.records] == ["energy of stage1"] * 2
    assert all(d["target_activation"] > 2 * s["target_activation"] for d, s in zip(dream.records, start.records))


def test_a_fixed_index_is_the_one_target_and_the_class_reference_is_skipped_with_a_note(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="protoscope"):
        result = run(tmp_path, "objective=channel", "objective.layer=stage2", "objective.index=4",
                     "reference=bundled_photos")
    assert [r["target"] for r in result.records] == ["channel 4 of stage2"]
    assert "this run's rows are channel targets, which have no class: the evaluation is skipped" in caplog.text
    assert not (tmp_path / "evaluation").exists()
    import protoscope.generation.pipeline as pipeline

    asked = {"overrides": ["objective=channel", "reference=bundled_photos"]}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "hydra_job", lambda: asked)
        with pytest.raises(ConfigError, match="needs class targets; this run's rows are channel targets, which have "
                                              "no class: drop reference="):
            run(tmp_path / "asked", "objective=channel", "objective.layer=stage2", "objective.index=4",
                "reference=bundled_photos")
    assert read_record(tmp_path / "asked")["step"] == 0  # before the first step


# ---------------------------------------------------------------- composition and errors


def test_objective_terms_compose_a_weighted_recipe_whose_entries_the_command_line_reweighs_or_adds():
    add = ["+objective.terms.neuron.weight=0.5", "+objective.terms.neuron.term._target_=protoscope.objectives.Neuron",
           "+objective.terms.neuron.term.layer=stage1", "+objective.terms.neuron.term.index=3"]
    cfg = compose_cfg("generate", ["model=tiny_cnn", "objective=terms", "objective.terms.main.term.layer=stage3", *add])
    objective = build(cfg.objective)
    assert isinstance(objective, Sum) and objective.coefs == [1.0, 0.05, 0.5]
    main, energy, neuron = objective.terms
    assert (type(main), main.layer, main.index) == (Channel, "stage3", None)  # reads each row's channel
    assert (type(energy), energy.layer) == (LayerEnergy, "stage3")  # follows the main term's layer
    assert (type(neuron), neuron.layer, neuron.index) == (Neuron, "stage1", 3)
    g = torch.Generator().manual_seed(0)
    from protoscope.generation.context import StepContext

    acts = {"stage1": torch.randn(2, 8, 16, 16, generator=g), "stage3": torch.randn(2, 32, 4, 4, generator=g)}
    images = torch.zeros(2, 3, 32, 32)
    ctx = StepContext(images=images, inputs=images, logits=torch.zeros(2, 10), activations=acts,
                      targets=torch.tensor([[2], [7]]))
    expected = (-acts["stage3"].mean((2, 3))[[0, 1], [2, 7]] - 0.05 * acts["stage3"].pow(2).flatten(1).mean(1)
                - 0.5 * acts["stage1"][:, 3, 8, 8])
    torch.testing.assert_close(objective(ctx), expected)
    off = compose_cfg("generate", ["model=tiny_cnn", "objective=terms", "objective.terms.energy.weight=0"])
    assert len(build(off.objective).terms) == 1


@pytest.mark.parametrize("overrides, message", [
    (["objective.layer=stag2", "targets=[1]"],
     r"^layer 'stag2' is not a module of model tiny_cnn \(close names: stage2, stage2\.1, stage2\.0, stage3, stage1\); set objective.layer"),
    (["objective.layer=stage2", "targets=[1,16]"], r"^target 16 is out of range: the layer has 16 channels \(0\.\.15\)$"),
    (["objective.layer=stage2", "objective.index=16"], r"^target 16 is out of range: the layer has 16 channels"),
    (["objective.layer=stage2"], r"^objective channel optimises each row's own channel: give targets=\[\.\.\.\] "
                                 r"\(channel indices 0\.\.15 of stage2\) or targets=all$"),
    (["objective.layer=stage2", "objective.index=3", "targets=[1]"],
     r"^the objective fixes its channel \(channel 3 of stage2\): drop targets="),
    (["objective.layer=stage2", "targets=[one]"], r"^target 'one' is not a channel index"),
])
def test_bad_feature_targets_fail_in_one_line_before_the_model_loop(tmp_path, overrides, message):
    cfg = compose_cfg("generate", [*FAST, "objective=channel", *overrides], tmp_path)
    with pytest.raises(ConfigError, match=message) as err:
        prepare(cfg)
    assert "\n" not in str(err.value)


def test_a_missing_or_mis_sized_direction_fails_in_one_line_before_the_model_loads(tmp_path):
    from protoscope.validation import validate_generate

    missing = compose_cfg("generate", [*FAST, "objective=direction", f"objective.path={tmp_path / 'none.pt'}"])
    with pytest.raises(ConfigError, match=r"^direction file .*none\.pt does not exist: save one with torch\.save"):
        validate_generate(missing, multirun=False)
    torch.save(torch.ones(5), tmp_path / "short.pt")
    wrong = compose_cfg("generate", [*FAST, "objective=direction", "objective.layer=stage3",
                                     f"objective.path={tmp_path / 'short.pt'}"])
    validate_generate(wrong, multirun=False)  # the size needs the model: prepare finds it
    with pytest.raises(ConfigError, match="layer 'stage3' has 32 dimensions per image, the direction has 5"):
        prepare(wrong)
    with pytest.raises(ConfigError, match="targets= .*|the objective fixes its direction"):
        prepare(compose_cfg("generate", [*FAST, "objective=direction", f"objective.path={tmp_path / 'short.pt'}",
                                         "targets=[0,1]"]))


def test_feature_configs_skip_the_class_check_and_class_targets_still_accept_targets(tmp_path):
    from protoscope.validation import validate_generate

    validate_generate(compose_cfg("generate", ["model=tiny_cnn", "objective=channel", "targets=[0]"]), multirun=False)
    cfg = compose_cfg("generate", [*FAST, "targets=[2, 0+1]", "seeds_per_class=2"], tmp_path)
    _, rows, _ = prepare(cfg)
    assert [(r.classes, r.seed) for r in rows] == [((2,), 0), ((2,), 1), ((0, 1), 0), ((0, 1), 1)]
    assert row_targets(rows, 10)[2].tolist() == [0.5, 0.5] + [0.0] * 8


def test_diversity_pushes_apart_the_seeds_of_one_channel_target(tmp_path, tiny):
    """Lucent's diversity through protoscope-generate: the seeds of a feature target share its [R,1] index."""
    from protoscope.models.hooks import record_activations

    gram_cos = {}
    for weight in (0.0, 50.0):
        result = run(tmp_path / f"w{weight}", "objective=channel", "objective.layer=stage3", "targets=[2]",
                     "seeds_per_class=2", "regularizer=[diversity]", f"regularizer.diversity.weight={weight}",
                     "regularizer.diversity.layer=stage2", "transform=none", "schedule.prototype_steps=40")
        with torch.no_grad(), record_activations(tiny.network, ["stage2"], reduce=None) as store:
            tiny.network(result.images)
        act = store["stage2"].flatten(2)
        gram = (act @ act.transpose(1, 2)).flatten(1)
        gram = gram / gram.norm(dim=1, keepdim=True)
        gram_cos[weight] = (gram[0] @ gram[1]).item()
    assert gram_cos[50.0] < gram_cos[0.0] - 0.01, gram_cos


def test_two_processes_share_the_channel_targets_whole_and_give_the_images_of_one_process(tmp_path):
    """Rows sharded over two processes (ddp_spawn on the CPU): each owns one target with both its seeds."""
    from test_sharding import SPAWN, RecordShard

    common = [*CHANNEL, "optimizer=sgd", "optimizer.lr=0.5"]
    one = run(tmp_path / "one", *common)
    (tmp_path / "shards").mkdir()
    two = run(tmp_path / "two", *common, *SPAWN, callbacks=[RecordShard(tmp_path / "shards")])
    torch.testing.assert_close(two.images, one.images, atol=1e-5, rtol=0)
    assert [json.loads((tmp_path / "shards" / f"rank{r}.json").read_text())["rows"] for r in (0, 1)] == [[0, 1], [2, 3]]
    assert [r["target"] for r in two.records] == ["channel 1 of stage2"] * 2 + ["channel 5 of stage2"] * 2
    assert read_record(tmp_path / "two")["targets"] == ["channel 1 of stage2", "channel 5 of stage2"]
