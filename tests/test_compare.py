"""protoscope-compare: identical models differ nowhere, a planted shortcut ranks first, clear errors, outputs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg
from protoscope.comparison import Side, compare_sides, run_compare
from protoscope.errors import ConfigError
from protoscope.models import load_model
from protoscope.wandb_offline import read_offline_run
from shortcut_helpers import CLASSES, SMALL_MODEL, shortcut_folder

GEN = ["param=pixel", "schedule.baseline_steps=2", "schedule.prototype_steps=10", "trainer.enable_progress_bar=false",
       "trainer.accelerator=cpu", "trainer.log_every_n_steps=4", "detect.baseline_steps=20"]
TINY = ["model=tiny_cnn", "classes=[0,1,2]", "seeds_per_class=2", *GEN]



def logged_summary(run_dir: Path, last_key: str) -> dict:
    return read_offline_run(run_dir, wait_for=last_key)["summary"]


def test_identical_models_differ_in_no_class_and_outputs_are_written(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = run_compare(compose_cfg("compare", [*TINY, "mark=square", "logger=wandb"], tmp_path))
    recs = out.comparison.records
    assert [r["class_index"] for r in recs] == [0, 1, 2]  # all tied at 0: class order
    for r in recs:
        for term in ("difference", "pixel", "pixel_l1", "cross", "path", "cross_prob"):
            assert abs(r[term]) < 1e-6, (term, r)
        assert r["p_A(A)"] == r["p_B(A)"] == r["p_B(B)"] == r["p_A(B)"]
    det = {(d["model"], d["class_index"]): d["mark_corr"] for d in out.detection}
    assert all(det["A", c] == det["B", c] for c in (0, 1, 2))
    # Files: ranking table, per-class heat maps and side-by-side grids, detection table.
    rows = list(csv.DictReader((tmp_path / "ranking.csv").open()))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3] and {r["class_name"] for r in rows} == {"class_0", "class_1", "class_2"}
    assert "| rank | class_index | class_name | difference |" in (tmp_path / "ranking.md").read_text()
    assert len(list((tmp_path / "heatmaps").glob("*.png"))) == 3 == len(list((tmp_path / "side_by_side").glob("*.png")))
    assert len(list(csv.DictReader((tmp_path / "detection.csv").open()))) == 6
    for name in ("heatmaps.png", "side_by_side.png", "mark.png", "comparison.json", "a/prototypes.pt", "b/prototypes.pt"):
        assert (tmp_path / name).is_file(), name
    # W&B (offline): the ranking table and the figures.
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    summary = logged_summary(run_dir, "compare/side_by_side/filenames")
    table = json.loads((run_dir / "files" / summary["compare/ranking/path"]).read_text())
    assert len(table["data"]) == 3 and "difference" in table["columns"]
    assert summary["compare/detection/nrows"] == 6
    assert summary["compare/top_difference"] == pytest.approx(0.0, abs=1e-6)
    assert (run_dir / "files" / summary["compare/heatmaps/filenames"][0]).is_file()
    assert (run_dir / "files" / summary["compare/side_by_side/filenames"][0]).is_file()


def test_finished_sides_are_reused_and_a_changed_recipe_regenerates(tmp_path):
    cfg = compose_cfg("compare", TINY, tmp_path)
    run_compare(cfg)
    stamp = (tmp_path / "a" / "prototypes.pt").stat().st_mtime_ns
    again = run_compare(cfg)
    assert (tmp_path / "a" / "prototypes.pt").stat().st_mtime_ns == stamp
    changed = run_compare(compose_cfg("compare", [*TINY, "seeds_per_class=1"], tmp_path))
    assert (tmp_path / "a" / "prototypes.pt").stat().st_mtime_ns != stamp
    assert len(changed.comparison.a.class_ids) == 3 and len(again.comparison.a.class_ids) == 6
    # Existing run folders as the two sides give the same comparison.
    from_runs = run_compare(compose_cfg("compare", [*TINY, f"run_a={tmp_path / 'a'}", f"run_b={tmp_path / 'b'}"],
                                        tmp_path / "from_runs"))
    assert [r["difference"] for r in from_runs.comparison.records] == [r["difference"] for r in changed.comparison.records]


@pytest.fixture(scope="module")
def shortcut_pair(tmp_path_factory):
    """A clean and a shortcut model (a square on every 'mid' image, which looks like 'dark' otherwise), compared."""
    from protoscope.training import train

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("pair")
    root = shortcut_folder(tmp / "imgs")
    base = ["train_data=image_folder", f"train_data.root={root}", "train_data.val_fraction=0.25", "logger=none",
            "epochs=12", "batch_size=16", "save_to=null", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            *[f"model.{o}" for o in SMALL_MODEL]]
    mark = ["shortcut.mark.height=3", "shortcut.mark.width=3"]
    train(compose_cfg("train", base, tmp / "clean"))
    short = train(compose_cfg("train", [*base, "shortcut=square", "shortcut.target=mid", "shortcut.share=1.0", *mark],
                              tmp / "short"))
    model = [f"model_{k}.{o}" for k in "ab" for o in [*SMALL_MODEL, f"class_names=[{','.join(CLASSES)}]"]]
    cfg = compose_cfg("compare", [
        "model=fashion_cnn", *model, f"model_a.checkpoint={tmp / 'clean' / 'model.pt'}",
        f"model_b.checkpoint={tmp / 'short' / 'model.pt'}", "label_a=clean", "label_b=shortcut",
        "classes=all", "seeds_per_class=2", *GEN, "schedule.prototype_steps=60", "param=fourier",
        "regularizer=[tv]", "regularizer.tv.weight=0.01", "param_ops=[]",  # a recipe pinned here: mild L_hf, no blur
        "mark=file", f"mark.path={tmp / 'short' / 'mark.pt'}", "reference=image_folder", f"reference.root={root}"],
        tmp / "compare")
    return short.metrics["shortcut"], run_compare(cfg)


def test_planted_class_ranks_first_for_an_obvious_shortcut(shortcut_pair):
    metrics, out = shortcut_pair
    assert metrics["target_accuracy_unmarked"] < 0.5 < metrics["target_accuracy_marked"]  # a real shortcut
    recs = out.comparison.records
    assert recs[0]["class_name"] == "mid"
    assert recs[0]["difference"] > 2 * recs[1]["difference"]
    assert recs[0]["cross"] > max(r["cross"] for r in recs[1:])
    # The shortcut model's 'mid' prototypes show the mark; the clean model's do not.
    det = {(d["model"], d["class_name"]): d for d in out.detection}
    assert det["shortcut", "mid"]["mark_corr_rank"] == 1
    assert det["shortcut", "mid"]["mark_corr"] > det["clean", "mid"]["mark_corr"]
    assert det["shortcut", "mid"]["paste_logprob_change"] > det["clean", "mid"]["paste_logprob_change"]
    assert (out.out_dir / "side_by_side" / "001_2_mid.png").is_file()


def test_natural_image_cross_scores_agree_with_each_sides_own_evaluation(shortcut_pair):
    """With reference=..., natural_M(X) is model M's path similarity (layer-mean Spearman to its natural class
    mean) of X's prototypes; for M = X it is what the side's generation run evaluated itself."""
    _, out = shortcut_pair
    for label in ("clean", "shortcut"):
        own = list(csv.DictReader((out.out_dir / ("a" if label == "clean" else "b") / "evaluation"
                                   / "path_similarity.csv").open()))
        for rec in out.comparison.records:
            rows = [float(r["spearman/mean"]) for r in own if int(r["class_index"]) == rec["class_index"]]
            assert rec[f"natural_{label}({label})"] == pytest.approx(sum(rows) / len(rows), abs=1e-6)
    for rec in out.comparison.records:
        v = {k: rec[f"natural_{k}"] for k in ("clean(clean)", "shortcut(clean)", "shortcut(shortcut)", "clean(shortcut)")}
        assert rec["natural_cross"] == pytest.approx(0.5 * ((v["clean(clean)"] - v["clean(shortcut)"])
                                                            + (v["shortcut(shortcut)"] - v["shortcut(clean)"])))
    assert "natural_cross" in (out.out_dir / "ranking.md").read_text()


def random_sides(n_classes: int = 6, seeds: int = 2) -> tuple[Side, Side]:
    cfg = compose_cfg("generate", ["model=tiny_cnn"]).model
    a = load_model(cfg)
    cfg.arch.init_seed = 1
    b = load_model(cfg)
    g = torch.Generator().manual_seed(0)
    ids = [c for c in range(n_classes) for _ in range(seeds)]
    seed_ids = [s for _ in range(n_classes) for s in range(seeds)]
    images = torch.rand(2, len(ids), 3, 32, 32, generator=g)
    return Side("A", a, images[0], ids, seed_ids), Side("B", b, images[1], ids, seed_ids)


def test_each_weight_acts_on_the_ranking():
    a, b = random_sides()
    both = compare_sides(a, b)
    scale = {t: sum(abs(r[t]) for r in both.records) / len(both.records) for t in ("pixel", "cross", "path")}
    for r in both.records:  # each term relative to its mean |value| over classes, then the mean over terms
        assert r["difference"] == pytest.approx(sum(r[t] / scale[t] for t in scale) / 3)
    assert sum(r["difference"] for r in both.records) / len(both.records) <= 1.0 + 1e-9
    orders = {}
    for term in ("pixel", "cross", "path"):
        only = compare_sides(a, b, {"pixel": 0.0, "cross": 0.0, "path": 0.0, term: 1.0}).records
        assert [r[term] for r in only] == sorted((r[term] for r in only), reverse=True)
        orders[term] = tuple(r["class_index"] for r in only)
    assert len(set(orders.values())) == 3  # every term, weighted alone, ranks the classes differently
    # Rows are matched by (class, seed), whatever their order in each set.
    perm = torch.randperm(len(b.class_ids), generator=torch.Generator().manual_seed(1)).tolist()
    shuffled = Side("B", b.classifier, b.images[perm], [b.class_ids[i] for i in perm], [b.seeds[i] for i in perm])
    assert compare_sides(a, shuffled).records == both.records


def test_incomparable_inputs_are_one_line_errors(tmp_path):
    a, b = random_sides()
    with pytest.raises(ConfigError, match=r"different prototype rows \(class, seed\)"):
        compare_sides(a, Side("B", b.classifier, b.images[:-1], b.class_ids[:-1], b.seeds[:-1]))
    with pytest.raises(ConfigError, match="unknown difference terms \\['colour'\\]"):
        compare_sides(a, b, {"colour": 1.0})
    errors = [
        (["model_b.class_names=[a,b,c,d,e,f,g,h,i,j]"], "have different class lists \\(class 0 is 'class_0' vs 'a'\\)"),
        (["model_b.arch.num_classes=5", "model_b.num_classes=5"], "different class lists \\(10 vs 5 classes\\)"),
        (["label_b=A"], "label_a and label_b are both 'A'"),
        (["mark=square", "mark.kind=circle"], "unknown mark kind 'circle'"),
    ]
    for extra, message in errors:
        with pytest.raises(ConfigError, match=message) as info:
            run_compare(compose_cfg("compare", [*TINY, *extra], tmp_path))
        assert "\n" not in str(info.value)
        assert not (tmp_path / "a").exists()  # failed before generating anything


def test_cli_reports_mismatched_models_in_one_line(tmp_path):
    env = {**os.environ, "PROTOSCOPE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "protoscope.compare", *TINY, "model_b.class_names=[a,b,c,d,e,f,g,h,i,j]",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.startswith("protoscope:")]
    assert len(lines) == 1 and "ConfigError: models A (tiny_cnn) and B (tiny_cnn) have different class lists" in lines[0]
    assert "Traceback" not in proc.stderr


def test_settings_under_model_are_flagged_as_unused(tmp_path, caplog):
    with pytest.raises(ConfigError, match="class index 99 is out of range"):
        run_compare(compose_cfg("compare", [*TINY, "model.arch.width=4", "classes=[99]"], tmp_path))
    assert "settings under model.* are not used by protoscope-compare" in caplog.text
