"""protoscope-audit: screening finds a planted class, ranks do not move with threads, entanglement finds
merged classes, marks are a pluggable kind with position-free detection, records and resume."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import compose_cfg
from protoscope.audit.carriers import Carriers, equidistant_baselines, uniform_carriers
from protoscope.audit.entanglement import entanglement
from protoscope.audit.run import run_audit
from protoscope.audit.screening import logits_of, screen
from protoscope.errors import ConfigError
from protoscope.generation.renderer import as_classifier, render
from protoscope.objectives import Logit
from protoscope.shortcuts import MarkKind, make_mark, load_mark
from protoscope.shortcuts.kinds import GlobalShift, PlacedMark
from protoscope.shortcuts.marks import blend
from protoscope.wandb_offline import read_offline_run

SIZE, TARGET = 16, 3


class MarkNet(nn.Module):
    """Random features for every class, plus a detector of a bright 4x4 patch anywhere that adds to one class
    (what a model that learned a planted square looks like)."""

    def __init__(self, classes: int = 10, target: int = TARGET, seed: int = 0, merge: tuple[int, int] | None = None):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(48, classes)
        if merge is not None:  # two classes the model cannot tell apart
            with torch.no_grad():
                self.head.weight[merge[1]] = self.head.weight[merge[0]]
                self.head.bias[merge[1]] = self.head.bias[merge[0]]
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(x))
        patch_mean = nn.functional.avg_pool2d(x.mean(1, keepdim=True), 4, stride=1)
        fired = torch.relu(patch_mean - 0.85).flatten(1).amax(1) * 40.0
        return logits + fired[:, None] * nn.functional.one_hot(torch.tensor(self.target), logits.shape[1])


def classifier(**kw):
    return as_classifier(MarkNet(**kw), size=SIZE, mean=(0.0,), std=(1.0,))


def carriers_of(clf, seeds: int = 4) -> Carriers:
    return Carriers.join([equidistant_baselines(clf, seeds, steps=20, param="pixel"), uniform_carriers(clf, [0.5], 2)])


SQUARE = {"kind": "square", "height": 4, "width": 4, "margin": 1, "value": 1.0, "background": 0.0}
RANDOM_SQUARE = {"_target_": "protoscope.shortcuts.kinds.random_position", "mark": SQUARE, "seed": 0}


@pytest.mark.parametrize("spec", [SQUARE, RANDOM_SQUARE], ids=["square", "random_position"])
def test_screening_ranks_the_planted_class_first(spec):
    clf = classifier()
    mark = make_mark(spec, SIZE, 1)
    result = screen(clf, mark, carriers_of(clf))
    top = result.records[0]
    assert top["class_index"] == TARGET and top["logprob_rank"] == 1 and top["median_carrier_rank"] == 1
    assert top["logit_gain"] > 5 * max(abs(r["logit_gain"]) for r in result.records[1:])
    # a mark the detector does not respond to (dark square) does not put the class first
    dark = make_mark({**SQUARE, "value": 0.0, "background": 1.0}, SIZE, 1)
    assert screen(clf, dark, carriers_of(clf)).records[0]["class_index"] != TARGET


def test_screening_rank_does_not_move_with_the_thread_count_and_is_deterministic_for_a_seed():
    clf = as_classifier(MarkNet(classes=200, seed=1), size=32, mean=(0.0,), std=(1.0,))
    mark = make_mark(RANDOM_SQUARE, 32, 1)
    carriers = Carriers(torch.rand(12, 1, 32, 32, generator=torch.Generator().manual_seed(0)), ["uniform"] * 12, [-1] * 12)
    runs = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        runs.append(screen(clf, mark, carriers, seed=5))
    orders = [[r["class_index"] for r in s.records] for s in runs]
    assert orders[0] == orders[1] == orders[2]
    assert runs[0].records == runs[2].records  # same threads, same seed: identical
    other = screen(clf, mark, carriers, seed=6)  # another seed moves the random placements
    assert not torch.equal(other.logit_gain, runs[0].logit_gain)


def test_a_class_is_scored_without_its_own_prototypes_as_carriers():
    clf = classifier()
    protos = torch.rand(4, 1, SIZE, SIZE)
    carriers = Carriers(protos, ["prototype"] * 4, [TARGET, TARGET, 0, 1])
    result = screen(clf, make_mark(SQUARE, SIZE, 1), carriers)
    by_class = {r["class_index"]: r for r in result.records}
    assert by_class[TARGET]["carriers"] == 2 and by_class[0]["carriers"] == 3 and by_class[5]["carriers"] == 4
    expected = result.logit_gain[2:, TARGET].mean()
    assert by_class[TARGET]["logit_gain"] == pytest.approx(float(expected))


def test_entanglement_puts_two_merged_classes_on_top():
    clf = classifier(classes=6, merge=(1, 4), seed=2)
    classes = list(range(6))
    targets = torch.eye(6).repeat_interleave(2, 0)
    protos = render(clf, Logit(), steps=40, rows=12, param="pixel", transform="none", targets=targets,
                    progress=False)
    ids = [c for c in classes for _ in range(2)]
    neutral = carriers_of(clf, seeds=2)
    ent = entanglement(logits_of(clf, protos), ids, logits_of(clf, neutral.images), clf.class_names)
    top = ent.pairs[0]
    assert {top["class_a"], top["class_b"]} == {1, 4} and top["mutual"] == pytest.approx(1.0)
    assert ent.pairs[1]["mutual"] < 0.9
    assert [sorted(g) for g in ent.clusters] == [[1, 4]]


class CornerDot(MarkKind):
    """A custom kind, defined outside protoscope: a 2x2 dot in the bottom-right corner, with a given value."""

    kind = "corner_dot"

    def __init__(self, size: int, channels: int, value: float = 1.0) -> None:
        self.size, self.channels, self.value = size, channels, value
        self.spec = {"kind": "corner_dot", "value": value}
        self.pattern = torch.full((channels, size, size), value)
        self.mask = torch.zeros(1, size, size)
        self.mask[:, -4:, -4:] = 1.0

    def paste(self, images, generator=None):
        self.check_fits(images)
        return blend(images, self.pattern, self.mask)

    def template(self):
        pattern = torch.full((self.channels, 8, 8), 0.5)
        pattern[:, 2:6, 2:6] = self.value
        mask = torch.zeros(1, 8, 8)
        mask[:, 2:6, 2:6] = 1.0
        return pattern, mask


def test_a_mark_kind_defined_outside_the_package_is_built_by_target_and_screened():
    mark = make_mark({"_target_": f"{__name__}.CornerDot", "value": 1.0}, SIZE, 1)
    assert isinstance(mark, CornerDot) and mark.kind == "corner_dot"
    clf = classifier()
    assert screen(clf, mark, carriers_of(clf)).records[0]["class_index"] == TARGET
    images = torch.rand(3, 1, SIZE, SIZE) * 0.5
    assert bool((mark.detect(mark.paste(images)) > mark.detect(images) + 0.3).all())
    with pytest.raises(ConfigError, match="not a mark"):
        make_mark({"_target_": "collections.OrderedDict"}, SIZE, 1)
    with pytest.raises(ConfigError, match="cannot build"):
        make_mark({"_target_": f"{__name__}.NoSuchMark"}, SIZE, 1)


def test_detection_is_position_free_and_counts_thin_sparse_marks():
    # a text-like glyph ("ET" in one-pixel strokes, 30% opaque) at a random place in each smooth image
    pattern, mask = torch.ones(1, 7, 9), torch.zeros(1, 7, 9)
    for rows, cols in ((0, slice(0, 4)), (3, slice(0, 3)), (6, slice(0, 4)), (slice(None), 0), (0, slice(5, 9)),
                       (slice(None), 7)):
        mask[:, rows, cols] = 0.3
    glyph = PlacedMark(pattern, mask, 32, 1, seed=0)
    noise = nn.functional.avg_pool2d(torch.rand(40, 1, 36, 36, generator=torch.Generator().manual_seed(0)), 5, 1)
    clean = ((noise - noise.mean((2, 3), keepdim=True)) * 1.2 + 0.5).clamp(0, 1)
    marked = glyph.paste(clean, torch.Generator().manual_seed(1))
    assert float(glyph.detect(marked).min()) > float(glyph.detect(clean).max())
    fixed = make_mark(SQUARE, 32, 1)  # a fixed-position mark found where it was moved to
    moved = torch.roll(fixed.paste(clean), shifts=(11, 13), dims=(2, 3))
    assert float(fixed.detect(moved).min()) > float(fixed.detect(clean).max())


def test_global_and_placed_marks_paste_as_configured_and_round_trip_through_mark_pt(tmp_path):
    shift = make_mark({"_target_": "protoscope.shortcuts.kinds.GlobalShift", "shift": [0.1, 0.0, -0.1]}, 8, 3)
    out = shift.paste(torch.full((1, 3, 8, 8), 0.5))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.6, 0.5, 0.4]))
    placed = make_mark({**RANDOM_SQUARE, "mark": {**SQUARE, "height": 2, "width": 2}}, 12, 1)
    images = torch.zeros(6, 1, 12, 12)
    pasted = placed.paste(images)
    corners = {tuple((p[0] > 0).nonzero().min(0).values.tolist()) for p in pasted}
    assert all(int((p > 0).sum()) == 4 for p in pasted) and len(corners) > 1  # one square each, not all alike
    for mark in (shift, placed):
        torch.save(mark.to_state(), tmp_path / "mark.pt")
        size, ch = (8, 3) if mark is shift else (12, 1)
        loaded = load_mark(tmp_path / "mark.pt", size, ch)
        assert type(loaded) is type(mark)
        x = torch.rand(2, ch, size, size)
        assert torch.equal(loaded.paste(x, torch.Generator().manual_seed(3)), mark.paste(x, torch.Generator().manual_seed(3)))
    assert isinstance(shift, GlobalShift)


def test_a_global_shift_is_detected_by_the_pixels_it_moves_not_by_a_bright_shape_of_the_same_mean():
    shift = make_mark({"_target_": "protoscope.shortcuts.kinds.GlobalShift", "shift": 0.2}, 16, 1)
    dark = torch.full((1, 1, 16, 16), 0.2)
    shape = dark.clone()
    shape[..., 4:12, 4:12] = 1.0  # a quarter of the pixels raised by 0.8: the mean shift of the global 0.2
    brightened = shift.paste(dark)
    assert float((shape - dark).mean()) == pytest.approx(float((brightened - dark).mean()), abs=1e-6)
    scores = shift.detect(torch.cat([dark, shape, brightened])) - shift.detect(dark)
    assert float(scores[2]) == pytest.approx(0.2, abs=1e-6) and float(scores[1]) == pytest.approx(0.0, abs=1e-6)
    loose = make_mark({"_target_": "protoscope.shortcuts.kinds.GlobalShift", "shift": 0.2, "coverage": 0.2}, 16, 1)
    assert float(loose.detect(shape) - loose.detect(dark)) == pytest.approx(0.8, abs=1e-6)  # coverage acts
    patches = torch.cat([shape, brightened])[..., 2:14, 2:14]  # patches smaller than the image
    assert torch.equal(shift.match_patches(patches), shift.detect(patches))
    with pytest.raises(ConfigError, match="coverage"):
        make_mark({"_target_": "protoscope.shortcuts.kinds.GlobalShift", "coverage": 0}, 16, 1)


def test_shortcuts_plant_is_the_module_not_the_function():
    from protoscope.shortcuts import plant

    assert hasattr(plant, "plant_splits") and hasattr(plant, "ShortcutPlan")


def test_imagenet_w_mark_is_the_watermark_of_the_imagenet_w_package():
    imagenet_w = pytest.importorskip("imagenet_w", reason="the optional extra protoscope[audit]")
    mark = make_mark({"_target_": "protoscope.shortcuts.kinds.text_mark", "text": "捷径捷径捷径"}, 224, 3)
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    expected = torch.stack([imagenet_w.AddWatermark(224)(x) for x in images])
    assert float((mark.paste(images) - expected).abs().max()) < 2 / 255  # the same alpha composite, up to 8-bit rounding
    assert float(mark.detect(expected).min()) > 3 * float(mark.detect(images).max())


FAST = ["model=tiny_cnn", "carriers.equidistant.seeds=2", "carriers.equidistant.steps=3", "logger=none"]


def test_cli_writes_record_tables_and_figure_logs_to_wandb_and_skips_a_completed_audit(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with caplog.at_level(logging.WARNING, logger="protoscope"):
        out = run_audit(compose_cfg("audit", [*FAST, "mark=brightness", "screening.classes=[3]", "logger=wandb"], tmp_path))
    # a global mark on synthetic carriers says where it ranks reliably
    assert "global mark (shift) on synthetic carriers" in caplog.text and "carriers.equidistant.seeds=0" in caplog.text
    logged = read_offline_run(next((tmp_path / "wandb").glob("offline-run-*")), wait_for="audit/screening/filenames")
    summary = logged["summary"]
    assert summary["screening/rank_3"] == out.results["screening"].summary["screening/rank_3"]
    assert summary["audit/screening/nrows"] == 10 and summary["audit/screening_classes/nrows"] == 10
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "completed" and record["tasks"] == ["screening"]
    rows = (tmp_path / "screening.csv").read_text().splitlines()
    assert len(rows) == 11 and rows[0].split(",")[-1] == "command" and "protoscope-audit" in rows[1]
    assert (tmp_path / "screening.png").stat().st_size > 0 and (tmp_path / "mark.png").is_file()
    assert out.results["screening"].summary["screening/rank_3"] >= 1
    again = run_audit(compose_cfg("audit", [*FAST, "mark=brightness", "screening.classes=[3]", "logger=wandb"], tmp_path))
    assert again.skipped and again.results["screening"].tables == json.loads(
        (tmp_path / "results" / "screening.json").read_text())["tables"]
    with pytest.raises(ConfigError, match="another config"):
        run_audit(compose_cfg("audit", [*FAST, "mark=square", "screening.classes=[3]"], tmp_path))


PATCHES = [*FAST, "task=[patches,candidates]", "patches.classes=[1,3,5]", "patches.seeds=[0,1]", "patches.size=8",
           "patches.steps=5", "patches.param=pixel", "patches.per_side=2", "candidates.per_side=2"]


def audit_cli(out_dir, overrides):
    proc = subprocess.run([sys.executable, "-m", "protoscope.audit.command", *overrides, f"hydra.run.dir={out_dir}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_patch_and_candidate_tasks_write_settings_shaped_outputs_and_a_rerun_skips(tmp_path):
    audit_cli(tmp_path, PATCHES)
    state = torch.load(tmp_path / "patches.pt", weights_only=True)
    assert tuple(state["patches"].shape) == (6, 3, 8, 8)  # 3 classes x 2 seeds, RGB, patches.size
    assert state["classes"] == [1, 1, 3, 3, 5, 5] and state["seeds"] == [0, 1, 0, 1, 0, 1]
    assert state["settings"]["size"] == 8 and state["settings"]["steps"] == 5
    with open(tmp_path / "patch_gains.csv") as fh:
        gains = list(csv.DictReader(fh))
    assert [int(r["rank"]) for r in gains] == list(range(1, 7))
    lp = [float(r["logprob_gain"]) for r in gains]
    assert lp == sorted(lp, reverse=True) and "protoscope-audit" in gains[0]["command"]
    with open(tmp_path / "candidates.csv") as fh:
        cands = list(csv.DictReader(fh))
    assert sorted(int(r["class_index"]) for r in cands) == [1, 3, 5]  # each class's best patch once
    assert [int(r["rank"]) for r in cands] == [1, 2, 3]
    flips = [float(r["flip_rate"]) for r in cands]
    assert flips == sorted(flips, reverse=True) and all(0 <= f <= 1 for f in flips)
    assert "| rank | class_index" in (tmp_path / "candidates.md").read_text()
    assert "| rank | row | class_index" in (tmp_path / "patch_gains.md").read_text()
    from PIL import Image

    assert Image.open(tmp_path / "patches.png").size == (6 * 10 + 2, 12)  # one row of 6 patches, 2 px gaps
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "completed" and record["tasks"] == ["patches", "candidates"]
    assert record["metrics"]["patches/rows"] == 6
    # 12 neutral carriers (2 equidistant, 5 grey levels, 5 colours): optimised on 6, gains measured on the other 6
    assert (record["metrics"]["patches/train_carriers"], record["metrics"]["patches/gain_carriers"]) == (6, 6)
    stamp = (tmp_path / "patches.pt").stat().st_mtime_ns, (tmp_path / "candidates.csv").stat().st_mtime_ns
    assert "already holds this completed audit" in audit_cli(tmp_path, PATCHES)
    assert ((tmp_path / "patches.pt").stat().st_mtime_ns, (tmp_path / "candidates.csv").stat().st_mtime_ns) == stamp


def test_patches_with_a_mark_say_how_much_each_patch_shows_it(tmp_path):
    from protoscope.audit.patches import appearance
    from protoscope.audit.run import load_inputs

    cfg = compose_cfg("audit", [*PATCHES, "task=patches", "mark=square"], tmp_path / "mark")
    out = run_audit(cfg)
    rows = out.results["patches"].tables["patch_gains"]
    state = torch.load(tmp_path / "mark" / "patches.pt", weights_only=True)
    expected = load_inputs(cfg)[1].match_patches(appearance(state["patches"].float(), 3))
    assert [r["mark_match"] for r in sorted(rows, key=lambda r: r["row"])] == pytest.approx(expected.tolist(), abs=1e-6)
    assert sorted(r["mark_rank"] for r in rows) == list(range(1, 7))
    top = min(rows, key=lambda r: r["mark_rank"])
    assert top["mark_match"] == max(r["mark_match"] for r in rows)
    assert out.results["patches"].summary["patches/mark_top_class_index"] == top["class_index"]
    from protoscope.audit.path_agreement import path_agreement
    from protoscope.audit.patch_tasks import neutral_split
    from protoscope.audit.tasks import AuditContext

    clf, mark = load_inputs(cfg)[:2]
    key = torch.load(tmp_path / "mark" / "carriers.pt", weights_only=True)["key"]
    held = neutral_split(AuditContext(cfg, tmp_path / "mark", clf, mark, None, key))[1]  # the saved carriers
    agreement = path_agreement(clf, state["patches"].float(), held, mark, per_side=2)
    assert [r["mark_path"] for r in sorted(rows, key=lambda r: r["row"])] == pytest.approx(agreement.tolist(), abs=1e-6)
    by_path = sorted(rows, key=lambda r: r["mark_path_rank"])
    assert [r["mark_path"] for r in by_path] == sorted((r["mark_path"] for r in rows), reverse=True)
    assert out.results["patches"].summary["patches/mark_path_top_class_index"] == by_path[0]["class_index"]
    plain = run_audit(compose_cfg("audit", [*PATCHES, "task=patches"], tmp_path / "plain"))
    assert not {"mark_match", "mark_path"} & set(plain.results["patches"].tables["patch_gains"][0])


def test_candidates_reuse_the_patches_and_gains_of_the_patch_task(tmp_path, monkeypatch):
    from protoscope.audit import devices, patch_tasks

    calls = {"optimise": 0, "gains": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(devices, "optimise_patches", counting("optimise", devices.optimise_patches))
    monkeypatch.setattr(patch_tasks, "patch_gains", counting("gains", patch_tasks.patch_gains))
    out = run_audit(compose_cfg("audit", PATCHES, tmp_path))
    assert set(out.results) == {"patches", "candidates"}
    assert calls == {"optimise": 1, "gains": 1}  # task=candidates took both from task=patches


def test_patch_rows_split_over_processes_join_to_the_one_process_result_and_resume_per_block(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_audit(compose_cfg("audit", [*PATCHES, "task=patches"], one))
    run_audit(compose_cfg("audit", [*PATCHES, "task=patches", "accelerator=cpu", "devices=2"], two))
    whole, split = (torch.load(d / "patches.pt", weights_only=True) for d in (one, two))
    assert split["classes"] == whole["classes"] == [1, 1, 3, 3, 5, 5]
    assert torch.allclose(split["patches"], whole["patches"], atol=1e-5)  # rows do not depend on their batch
    blocks = [torch.load(two / f"patches.shard{k}-of-2.pt", weights_only=True) for k in (0, 1)]
    assert [b["rows"] for b in blocks] == [[0, 3], [3, 6]]
    assert torch.equal(torch.cat([b["patches"] for b in blocks]), split["patches"])
    assert json.loads((two / "run.json").read_text())["devices"] == ["cpu", "cpu"]
    # a process that died: its block is redone, the finished block is reused
    stamp = (two / "patches.shard0-of-2.pt").stat().st_mtime_ns
    for path in (two / "patches.shard1-of-2.pt", two / "patches.pt", two / "run.json", two / "results" / "patches.json"):
        path.unlink()
    run_audit(compose_cfg("audit", [*PATCHES, "task=patches", "accelerator=cpu", "devices=2"], two))
    assert (two / "patches.shard0-of-2.pt").stat().st_mtime_ns == stamp
    assert torch.equal(torch.load(two / "patches.pt", weights_only=True)["patches"], split["patches"])


@pytest.mark.parametrize("overrides,message", [
    (["task=patches", "patches.size=64"], "patch size 64"),
    (["task=detection", "mark=square"], "needs run="),
    (["task=nonsense"], "no audit task"),
    ([], "nothing to audit"),
    (["mark=square", "carriers.photos=3"], "needs photos"),
    (["mark=square", "devices=0"], "positive number of devices"),
    (["mark=square", "accelerator=tpu"], "accelerator=tpu"),
    *([(["mark=square", "accelerator=gpu"], "no CUDA GPU")] if not torch.cuda.is_available() else []),
])
def test_bad_audit_input_is_one_clear_error(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_audit(compose_cfg("audit", [*FAST, *overrides], tmp_path))
