"""The console entry point and the W&B logger, read back from an offline run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST, compose_cfg
from protoscope.generation.pipeline import run_generation
from protoscope.wandb_offline import read_offline_run


def test_generate_cli_writes_a_run_folder(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "protoscope.generate", *FAST, "seeds_per_class=2", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((tmp_path / "metrics.json").read_text())
    assert len(records) == 6
    assert len(list((tmp_path / "prototypes").glob("*_seed1.png"))) == 3
    assert "classes:" in (tmp_path / "config.yaml").read_text()


def _wandb_run_dir(out_dir: Path) -> Path:
    runs = list((out_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def test_wandb_offline_run_holds_metrics_and_images(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg("generate", [*FAST, "logger=wandb", "seeds_per_class=2"], tmp_path)
    result = run_generation(cfg)
    run_dir = _wandb_run_dir(tmp_path)
    logged = read_offline_run(run_dir, wait_for="final/target_prob_mean")
    summary = logged["summary"]
    probs = [r["target_prob"] for r in result.records]
    assert summary["final/target_prob_mean"] == pytest.approx(sum(probs) / len(probs), rel=1e-6)
    assert summary["final/top1_rate"] == pytest.approx(sum(r["target_rank"] == 1 for r in result.records) / 6)
    steps = [row["trainer/global_step"] for row in logged["history"] if "loss/objective" in row]
    assert steps == [3, 7, 11]  # every log_every_n_steps=4 steps, and the last step
    # both seeds of class 0 logged as one image panel, with captions, and files on disk
    assert summary["prototypes/class-0/count"] == 2
    assert summary["prototypes/class-0/captions"][1].startswith("seed 0 #1 p=")
    for name in summary["prototypes/class-0/filenames"] + summary["prototypes/grid/filenames"]:
        assert (run_dir / "files" / name).is_file()
    table = json.loads((run_dir / "files" / summary["prototypes/metrics/path"]).read_text())
    assert len(table["data"]) == 6
    col = table["columns"].index("target_prob")
    assert [row[col] for row in table["data"]] == pytest.approx(probs)


def test_multirun_jobs_get_their_own_folders_and_wandb_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "protoscope.generate", "-m", *FAST, "logger=wandb", "tag=demo", "seed=0,1",
         f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and (p / "metrics.json").is_file())
    assert [p.name for p in jobs] == ["0", "1"]
    images = [torch.load(p / "prototypes.pt", weights_only=True)["images"] for p in jobs]
    assert not torch.allclose(images[0], images[1])  # different seeds, different prototypes
    run_ids = set()
    for num, job in enumerate(jobs):
        run_dir = _wandb_run_dir(job)
        run_ids.add(run_dir.name.rsplit("-", 1)[-1])
        probs = [r["target_prob"] for r in json.loads((job / "metrics.json").read_text())]
        logged = read_offline_run(run_dir, wait_for="final/target_prob_mean")
        assert logged["summary"]["final/target_prob_mean"] == pytest.approx(sum(probs) / len(probs), rel=1e-6)
        # grouped by sweep, named and tagged by the swept value, job number and overrides in the config
        assert logged["run"]["group"] == f"sweep/{tmp_path.name}"
        assert logged["run"]["name"] == f"seed={num} #{num}"
        assert logged["run"]["tags"] == ["demo", f"seed={num}"]
        assert logged["config"]["job"]["num"] == num and f"seed={num}" in logged["config"]["job"]["overrides"]
    assert len(run_ids) == 2  # one W&B run per job, never merged


def test_submitit_launcher_runs_the_sweep(tmp_path):
    """The cluster path (Hydra's submitit launcher; SLURM uses the same engine) with its local executor."""
    proc = subprocess.run(
        [sys.executable, "-m", "protoscope.generate", "-m", "hydra/launcher=submitit_local", *FAST, "seed=0,1",
         f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Submitit 'local' sweep" in proc.stdout + proc.stderr
    records = [json.loads((tmp_path / job / "metrics.json").read_text()) for job in ("0", "1")]
    assert [len(r) for r in records] == [3, 3]
    assert (tmp_path / ".submitit").is_dir()  # jobs went through submitit, not the basic launcher


def test_help_lists_the_groups_of_its_task_only():
    proc = subprocess.run([sys.executable, "-m", "protoscope.generate", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    groups = {line.split(":")[0] for line in proc.stdout.splitlines() if ": " in line and not line.startswith(" ")}
    assert {"model", "regularizer", "reference", "hydra/launcher"} <= groups
    assert "train_data" not in groups and "site" not in groups
    from protoscope.paths import conf_dir

    options = sorted(f.stem for f in (conf_dir() / "regularizer").glob("*.yaml"))
    assert f"regularizer: {', '.join(options)}" in proc.stdout and "tv_l1" in options
