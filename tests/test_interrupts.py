"""Ctrl-C and SIGTERM lose nothing: the state of the current step is saved and the run resumes exactly."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import FAST, compose_cfg
from protoscope.errors import RunInterrupted
from protoscope.generation.pipeline import run_generation
from protoscope.records import read_record
from test_studies import InterruptAt

COMMON = [*FAST, "checkpoint_every=5", "checkpoint_minutes=0"]


def logged_steps(run_dir) -> list[int]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


def test_sigint_at_a_step_between_checkpoints_then_rerun_equals_an_uninterrupted_run(tmp_path):
    full = run_generation(compose_cfg("generate", [*COMMON, "logger=csv"], tmp_path / "full"))
    cfg = compose_cfg("generate", [*COMMON, "logger=csv"], tmp_path / "stopped")
    with pytest.raises(RunInterrupted, match=r"SIGINT at step 8: the state is saved; resume with: "
                                             r"protoscope-generate .*hydra\.run\.dir="):
        run_generation(cfg, callbacks=[InterruptAt(7)])  # the signal arrives during step 8
    state = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 8 and 8 % 5 != 0  # saved at the signal, not at a checkpoint interval
    record = read_record(tmp_path / "stopped")
    assert record["status"] == "interrupted" and record["step"] == 8
    assert logged_steps(tmp_path / "stopped") == [3, 7]
    resumed = run_generation(cfg)
    torch.testing.assert_close(resumed.images, full.images, atol=0, rtol=0)
    assert logged_steps(tmp_path / "stopped") == logged_steps(tmp_path / "full") == [3, 7, 11]  # history kept
    attempts = read_record(tmp_path / "stopped")["attempts"]
    assert [a["status"] for a in attempts] == ["interrupted", "completed"]


def test_ctrl_c_on_the_command_line_prints_the_resume_command_which_finishes_the_run(tmp_path):
    run_dir = tmp_path / "run"
    args = [*FAST, "schedule.prototype_steps=1500", "checkpoint_every=1000", "progress.mode=log",
            "trainer.enable_progress_bar=true", "progress.every_n_steps=20", f"hydra.run.dir={run_dir}"]
    # a SLURM client on the PATH (as on a cluster's login node) must not add Lightning's `srun` hint
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    env = {**os.environ, "WANDB_MODE": "offline", "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "protoscope.generate", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and (read_record(run_dir) or {}).get("total_steps") is None:
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the optimisation
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("protoscope: RunInterrupted: SIGINT at step "), err[-3000:]
    record = read_record(run_dir)
    assert record["status"] == "interrupted" and 0 < record["step"] < 1502
    assert "not resumable" not in out + err and "will be deleted" not in out + err
    command = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert command[0] == "protoscope-generate" and f"hydra.run.dir={run_dir}" in command
    finish = subprocess.run([sys.executable, "-m", "protoscope.generate", *command[1:]], env=env, text=True,
                            capture_output=True, timeout=600)
    assert finish.returncode == 0, finish.stderr[-3000:]
    assert f"continuing at step {record['step']} of 1502" in finish.stdout + finish.stderr
    assert read_record(run_dir)["status"] == "completed"
