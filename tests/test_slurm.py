"""hydra/launcher=slurm against a real one-node SLURM (tests/cluster/slurm_up.sh; marker ``slurm``).

The commands are the README's ("Running a study on a SLURM cluster") with the tiny model's overrides.
Waits are generous (2 shared cores) but bounded. SLURM holds a requeued job for 2 minutes before it may
start again; the tests release it at once (``scontrol update StartTime=now``), as an admin could.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FAST
from protoscope.wandb_offline import read_offline_run

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[1]
UP = REPO / "tests" / "cluster" / "slurm_up.sh"
# The tiny model, on the CPU, with progress lines in the job logs (FAST turns the progress off).
TINY = [o for o in FAST if not o.startswith(("logger=", "trainer.enable_progress_bar", "trainer.accelerator"))]
TIMEOUT = 600


def _sh(*cmd: str, timeout: float = 60) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout


def _node_idle() -> bool:
    try:
        return bool(re.search(r"idle|mix|alloc", _sh("sinfo", "-h", "-o", "%t")))
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="module")
def slurm():
    """The default partition of a running local SLURM; started with tests/cluster/slurm_up.sh if needed
    (and stopped afterwards). Skipped, with one line, only where there is no root or no apt-get."""
    started = False
    if not _node_idle():
        if os.geteuid() != 0:
            pytest.skip("no SLURM here, and tests/cluster/slurm_up.sh needs root to start one")
        if not shutil.which("slurmctld") and not shutil.which("apt-get"):
            pytest.skip("no SLURM here, and no apt-get to install slurm-wlm")
        proc = subprocess.run([str(UP)], capture_output=True, text=True, timeout=900)
        if proc.returncode == 3:
            pytest.skip(proc.stderr.strip().splitlines()[-1])
        assert proc.returncode == 0, proc.stderr[-3000:]
        started = True
    partition = next(p.rstrip("*") for p in _sh("sinfo", "-h", "-o", "%P").split() if p.endswith("*"))
    yield partition
    if started:
        subprocess.run([str(UP), "stop"], timeout=120)


@pytest.fixture
def site(slurm, tmp_path, monkeypatch):
    """A project folder whose conf/site/slurm.yaml is made as the README says: copy the example, then
    edit it for this cluster (its partition, 1 CPU and 1 GB per job, the Python environment)."""
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    shutil.copy(conf / "site" / "slurm.example.yaml", conf / "site" / "slurm.yaml")
    values = OmegaConf.load(conf / "site" / "slurm.yaml")
    values.partition, values.cpus_per_task, values.mem_gb, values.timeout_min = slurm, 1, 1, 30
    values.setup = [f"source {Path(sys.executable).parent / 'activate'}", "export WANDB_MODE=offline"]
    OmegaConf.save(values, conf / "site" / "slurm.yaml")
    monkeypatch.setenv("PROTOSCOPE_CONF", str(conf))
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _cli(task: str, *args: str, timeout: float = TIMEOUT, wait: bool = True):
    cmd = [sys.executable, "-m", f"protoscope.{task}", *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _readme_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Running a study on a SLURM cluster", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def _readme(start: str) -> list[str]:
    """The README's command that starts with ``start``, as arguments after the program name."""
    line = next(line for line in _readme_block() if line.startswith(start))
    return line.split()[1:]


def _until(predicate, timeout: float, what: str, step: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _record(job: Path) -> dict:
    return json.loads((job / "run.json").read_text())


def _running_step(log: Path) -> int:
    """The last step a job's log reports (progress lines ``step N/M``), 0 before the first."""
    steps = re.findall(r"step (\d+)/\d+", log.read_text()) if log.is_file() else []
    return int(steps[-1]) if steps else 0


def _sweep_dir(root: Path, study: str = "lr") -> Path:
    dirs = sorted((root / "outputs" / "studies" / study).iterdir())
    assert len(dirs) == 1
    return dirs[0]


def test_a_study_runs_as_a_slurm_array_and_is_reported(site):
    """README: the CPU line, 2 x 2 values (4 jobs) of the tiny model; then the report and wandb sync line."""
    args = _readme("protoscope-generate -m hydra/launcher=slurm +study=lr trainer=cpu")
    assert args[:5] == ["-m", "hydra/launcher=slurm", "+study=lr", "trainer=cpu", "logger=wandb"]
    proc = _cli("generate", *args, *TINY, "optimizer.lr=0.05,0.2", "seed=0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "sacct" not in out and "Traceback" not in out  # no accounting here: no warning per poll
    sweep = _sweep_dir(site)
    jobs = [sweep / str(i) for i in range(4)]
    records = [_record(j) for j in jobs]
    assert [r["status"] for r in records] == ["completed"] * 4
    array = {r["job"]["id"].split("_")[0] for r in records}
    assert len(array) == 1 and sorted(r["job"]["id"].split("_")[1] for r in records) == ["0", "1", "2", "3"]
    (array_id,) = array
    assert f"SLURM job {array_id} (array {array_id}_[0-3])" in out
    # the sweep ends on the jobs' results; their processes may take a moment more to exit
    shown = _until(lambda: (s := _sh("scontrol", "show", "job", array_id)).count("JobState=COMPLETED") == 4 and s,
                   120, "the array's jobs to end")
    assert shown.count(f"ArrayJobId={array_id} ") == 4
    assert shown.count("TRES=cpu=1,node=1") == 4 and shown.count("MinMemoryNode=1G") == 4  # the site's values
    assert "TresPerNode" not in shown and "gpu" not in shown.lower()  # trainer=cpu asks for no GPU
    # the job's log: progress lines, no flood
    log = (sweep / ".submitit" / f"{array_id}_0" / f"{array_id}_0_0_log.out").read_text()
    assert "step 12/12 (100%)" in log and "Job completed successfully" in log
    assert len(log.splitlines()) < 30, log
    # the report from the job folders (README: protoscope-report sweep_dir=outputs/studies/lr/<time>)
    report_args = [a.replace("outputs/studies/lr/<time>", str(sweep.relative_to(site)))
                   for a in _readme("protoscope-report")]
    rep = _cli("report", *report_args)
    assert rep.returncode == 0, rep.stderr[-3000:]
    with open(sweep / "report" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    # W&B: the README's `wandb sync` line names the offline run of every job, and each reads back
    (pattern,) = _readme("wandb sync")[1:]
    runs = sorted(site.glob(pattern.replace("outputs/studies/lr/<time>", str(sweep.relative_to(site)))))
    assert [r.parents[1] for r in runs] == jobs
    for job, run in zip(jobs, runs):
        probs = [m["target_prob"] for m in json.loads((job / "metrics.json").read_text())]
        logged = read_offline_run(run, wait_for="final/target_prob_mean")
        assert logged["summary"]["final/target_prob_mean"] == pytest.approx(sum(probs) / len(probs), rel=1e-6)
        assert logged["config"]["job"]["num"] == int(job.name)


def test_an_sbatch_refusal_is_one_line_naming_the_setting(site):
    """The README's GPU line on this CPU-only cluster: sbatch refuses the GPUs; one line says what to change."""
    args = _readme("protoscope-generate -m hydra/launcher=slurm +study=lr trainer=gpu")
    proc = _cli("generate", *args, *TINY, "seed=0,1", "optimizer.lr=0.05", timeout=300)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert line.count("\n") == 0, proc.stderr
    assert line.startswith("protoscope: ConfigError: sbatch refused the jobs (") and "trainer=cpu" in line
    assert "generic resource" in line


def _slurm_job(sweep: Path, job: int) -> str:
    return _record(sweep / str(job))["job"]["id"]


def _release(job_id: str) -> None:
    """A requeued job may start again at once (SLURM's own hold is 2 minutes)."""
    def pending() -> bool:
        state = _sh("squeue", "-h", "-j", job_id, "-o", "%T").strip()
        return state == "PENDING"
    _until(pending, 120, f"{job_id} to be pending again")
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True, timeout=60)


def test_a_requeued_job_saves_resumes_and_ends_identical(site):
    """scontrol requeue of a running job: SIGTERM, the state is saved, SLURM runs it again, it resumes;
    its prototypes equal an uninterrupted run's, and run.json lists both attempts."""
    # long enough that the requeue lands mid-run on an idle machine (the tiny model runs ~260 steps/s)
    steps = ["schedule.prototype_steps=3000", "progress.every_n_steps=50", "checkpoint_every=100000"]
    sweep = site / "sweep"
    proc = _cli("generate", "-m", "hydra/launcher=slurm", "trainer=cpu", *TINY, *steps, "seed=3",
                f"hydra.sweep.dir={sweep}", wait=False)
    # the same run without SLURM and without interruption, meanwhile
    plain = _cli("generate", "trainer=cpu", *TINY, *steps, "seed=3", f"hydra.run.dir={site / 'plain'}", wait=False)
    try:
        job_id = _until(lambda: (sweep / "0" / "run.json").is_file() and _slurm_job(sweep, 0), 300, "the job to start")
        log = sweep / ".submitit" / job_id / f"{job_id}_0_log.out"
        _until(lambda: _running_step(log) >= 50, 300, "the job to reach step 50")
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
        err_log = log.with_name(f"{job_id}_0_log.err")
        _until(lambda: "RunInterrupted: SIGTERM" in err_log.read_text(), 120, "the state to be saved")
        shown = _sh("scontrol", "show", "job", job_id)
        assert "Restarts=1" in shown, shown
        _release(job_id)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err[-3000:]
        _, plain_err = plain.communicate(timeout=TIMEOUT)  # read its pipes: a full pipe would stall it
        assert plain.returncode == 0, plain_err[-3000:]
    finally:
        for p in (proc, plain):
            p.kill()
    record, total = _record(sweep / "0"), _record(site / "plain")["step"]
    assert record["status"] == "completed" and record["step"] == total > 3000
    attempts = record["attempts"]
    assert [a["status"] for a in attempts] == ["interrupted", "completed"], attempts
    saved_at = int(re.search(r"SIGTERM at step (\d+)", err_log.read_text()).group(1))
    assert 50 <= saved_at < total
    resumed = torch.load(sweep / "0" / "prototypes.pt", weights_only=True)["images"]
    expected = torch.load(site / "plain" / "prototypes.pt", weights_only=True)["images"]
    assert torch.equal(resumed, expected)


def test_a_cancelled_job_resumes_when_the_sweep_is_relaunched(site):
    """scancel of a running job: the sweep says how to resume it in one line; relaunching the same sweep
    skips the completed job and resumes the cancelled one from its saved state."""
    steps = ["schedule.prototype_steps=1500", "progress.every_n_steps=5", "checkpoint_every=20"]  # long enough that scancel lands mid-run on an idle machine
    sweep = site / "sweep"
    cmd = ["-m", "hydra/launcher=slurm", "trainer=cpu", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    proc = _cli("generate", *cmd, *steps, "hydra.launcher.array_parallelism=1", wait=False)
    try:
        first = _until(lambda: (sweep / "0" / "run.json").is_file() and _slurm_job(sweep, 0), 300, "job 0")
        _until(lambda: _record(sweep / "0")["status"] == "completed", 300, "job 0 to complete")
        second = _until(lambda: (sweep / "1" / "run.json").is_file() and _slurm_job(sweep, 1), 300, "job 1")
        assert first.split("_")[0] == second.split("_")[0]  # one array, a job at a time
        log = sweep / ".submitit" / second / f"{second}_0_log.out"
        _until(lambda: _running_step(log) >= 45, 300, "job 1 to pass its checkpoint at step 40")
        subprocess.run(["scancel", second], check=True, timeout=60)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    lost = [line for line in err.splitlines() if "ended without a result" in line]
    assert len(lost) == 1 and f"job 1 (SLURM {second})" in lost[0] and f"hydra.sweep.dir={sweep}" in lost[0]
    assert "Traceback" not in err
    assert _record(sweep / "1")["status"] != "completed"
    again = _cli("generate", *cmd, *steps)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already holds this completed run: skipped" in (sweep / "0" / "generate.log").read_text()
    job0, job1 = _record(sweep / "0"), _record(sweep / "1")
    assert [a["status"] for a in job0["attempts"]] == ["completed"]  # skipped: no second attempt
    assert job1["status"] == "completed" and job1["step"] == 1502
    assert [a["status"] for a in job1["attempts"]] == ["interrupted", "completed"]  # scancel's SIGTERM saved it
    resumed = torch.load(sweep / "1" / "prototypes.pt", weights_only=True)["images"]
    assert resumed.shape[0] == 3 and torch.isfinite(resumed).all()


def test_two_slurm_tasks_own_their_rows_and_equal_one_process(site):
    """trainer=ddp trainer.devices=2: two SLURM tasks (gloo on CPUs), each optimising its own rows; with
    speed.batch_invariant the prototypes equal one process's bit for bit."""
    common = [*TINY, "trainer.accelerator=cpu", "speed.batch_invariant=true", "seed=5"]
    sweep = site / "sweep"
    proc = _cli("generate", "-m", "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=2", *common,
                f"hydra.sweep.dir={sweep}", wait=False)
    one = _cli("generate", "trainer=cpu", *common, f"hydra.run.dir={site / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err[-3000:]
    job = sweep / "0"
    job_id = _record(job)["job"]["id"]
    logs = [(sweep / ".submitit" / job_id / f"{job_id}_{t}_log.out").read_text() for t in (0, 1)]
    assert "global_rank=0(2)" in logs[0] and "global_rank=1(2)" in logs[1]  # two SLURM tasks
    assert "Job completed successfully" in logs[1] and "gloo" in logs[0]
    # each process owns its rows: 3 rows (classes 0, 1, 2), 2 on rank 0 and 1 on rank 1
    assert "rank 0 of 2: 2 rows" in logs[0] and "rank 1 of 2: 1 rows" in logs[1]
    shown = _sh("scontrol", "show", "job", job_id)
    assert "NumTasks=2" in shown and "CPUs/Task=1" in shown
    two = torch.load(job / "prototypes.pt", weights_only=True)
    single = torch.load(site / "one" / "prototypes.pt", weights_only=True)
    assert list(two["class_indices"]) == list(single["class_indices"]) == [0, 1, 2]
    assert torch.equal(two["images"], single["images"])
