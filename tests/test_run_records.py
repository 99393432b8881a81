"""Every command records its run in run.json, skips a folder holding its completed run made with the same
recipe (one log line, nothing rerun) and refuses one made with another recipe (a ConfigError naming the
differing keys): protoscope-train, -lucent, -evaluate and -compare (protoscope.recorded), as generate does."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from conftest import FAST, compose_cfg
from protoscope.errors import ConfigError
from protoscope.recorded import recorded
from protoscope.records import read_record
from protoscope.studies.runs import find_run_dirs
from shortcut_helpers import SMALL_MODEL, shortcut_folder
from synthetic import make_reference_folder

SKIPPED = "already holds this completed run: skipped"


def skips_then_refuses(task, cfg, changed, folder: Path, product: str, differing: str, caplog) -> dict:
    """Run ``task`` on ``cfg``; again (skipped: ``product`` untouched, one attempt); with ``changed`` (refused)."""
    task(cfg)
    first = read_record(folder)
    assert first["status"] == "completed" and len(first["attempts"]) == 1
    stamp = (folder / product).stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="protoscope"):
        task(cfg)
    assert [r.getMessage() for r in caplog.records if SKIPPED in r.getMessage()] == [f"{folder} {SKIPPED} "
                                                                                    "(delete its run.json to run it again)"]
    assert (folder / product).stat().st_mtime_ns == stamp and read_record(folder) == first
    with pytest.raises(ConfigError, match=rf"{folder} holds a completed run with another config \({differing}"):
        task(changed)
    assert read_record(folder) == first  # the refusal leaves the record as it was
    return first


def test_train_skips_its_completed_run_and_refuses_a_changed_recipe(tmp_path, caplog):
    from protoscope.train import task

    root = shortcut_folder(tmp_path / "imgs", n=8)
    base = ["train_data=image_folder", f"train_data.root={root}", "train_data.val_fraction=0.25", "logger=none",
            "epochs=1", "batch_size=8", "save_to=null", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            *[f"model.{o}" for o in SMALL_MODEL]]
    folder = tmp_path / "train"
    record = skips_then_refuses(task, compose_cfg("train", base, folder), compose_cfg("train", [*base, "epochs=2"], folder),
                                folder, "model.pt", "epochs: 1 -> 2", caplog)
    assert record["task"] == "train" and record["recipe"]["epochs"] == 1
    assert task(compose_cfg("train", base, folder)) == record["value"]  # a skip returns the sweep value


def test_lucent_skips_its_completed_run_and_refuses_a_changed_recipe(tmp_path, caplog):
    pytest.importorskip("lucent.optvis.render", reason="optional extra not installed: pip install -e '.[lucent]'")
    from protoscope.lucent import task

    base = ["model=tiny_cnn", "classes=[0]", "steps=4"]
    folder = tmp_path / "lucent"
    record = skips_then_refuses(task, compose_cfg("lucent", base, folder), compose_cfg("lucent", [*base, "steps=5"], folder),
                                folder, "prototypes.pt", "steps: 4 -> 5", caplog)
    assert record["task"] == "lucent" and record["recipe"]["classes"] == [0]


def test_evaluate_skips_its_completed_run_and_refuses_a_changed_recipe(tmp_path, caplog):
    from protoscope.evaluate import task
    from protoscope.generation.pipeline import run_generation

    ref = make_reference_folder(tmp_path / "ref")
    gen = run_generation(compose_cfg("generate", [*FAST, "classes=[0,2]"], tmp_path / "gen"))
    base = [f"run_dir={gen.out_dir}", "reference=image_folder", f"reference.root={ref}", "progress=false",
            "measures=[spearman,l1]", "max_panels=0"]
    folder = gen.out_dir / "evaluation"  # no out_dir=: the run's evaluation folder holds the record
    record = skips_then_refuses(task, compose_cfg("evaluate", base, tmp_path / "hydra"),
                                compose_cfg("evaluate", [*base, "measures=[spearman]"], tmp_path / "hydra"),
                                folder, "path_similarity.json", r"measures: \['spearman', 'l1'\] -> \['spearman'\]",
                                caplog)
    assert record["task"] == "evaluate" and read_record(gen.out_dir)["task"] == "generate"
    assert find_run_dirs(gen.out_dir) == [gen.out_dir]  # a report still sees one run, not its evaluation


def test_compare_skips_its_completed_run_and_refuses_a_changed_recipe(tmp_path, caplog):
    from protoscope.compare import task

    base = ["model=tiny_cnn", "classes=[0,1]", "param=pixel", "schedule.baseline_steps=2", "schedule.prototype_steps=4",
            "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]
    folder = tmp_path / "compare"
    record = skips_then_refuses(task, compose_cfg("compare", base, folder),
                                compose_cfg("compare", [*base, "weights.pixel=2.0"], folder),
                                folder, "comparison.json", "weights.pixel: 1.0 -> 2.0", caplog)
    assert record["task"] == "compare"


def test_a_failed_or_interrupted_run_is_recorded_and_runs_again(tmp_path):
    cfg = compose_cfg("lucent", ["model=tiny_cnn"], tmp_path)
    calls = []

    def work(c):
        calls.append(len(calls))
        if len(calls) == 1:
            raise ValueError("broken input\nsecond line")
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 0.5

    task = recorded("demo", lambda c: {"seed": int(c.seed)})(work)
    with pytest.raises(ValueError):
        task(cfg)
    assert read_record(tmp_path)["status"] == "failed" and read_record(tmp_path)["error"] == "ValueError: broken input"
    with pytest.raises(KeyboardInterrupt):
        task(cfg)
    assert read_record(tmp_path)["status"] == "interrupted"
    assert task(cfg) == 0.5 and task(cfg) == 0.5 and calls == [0, 1, 2]  # the fourth call is a skip
    record = read_record(tmp_path)
    assert record["status"] == "completed" and [a["status"] for a in record["attempts"]] == [
        "failed", "interrupted", "completed"]
