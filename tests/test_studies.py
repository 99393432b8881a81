"""Sweeps end to end: run records, protoscope-report, failures, SIGKILL + relaunch, launchers, search."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import FAST, compose_cfg
from synthetic import make_reference_folder
from protoscope.errors import ConfigError
from protoscope.generation.pipeline import run_generation
from protoscope.records import read_record
from protoscope.validation import check_strategy, sweep_value


def cli(task: str, *args: str, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"protoscope.{task}", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "WANDB_MODE": "offline"}, **kw)


@pytest.fixture(scope="module")
def reference_root(tmp_path_factory) -> Path:
    return make_reference_folder(tmp_path_factory.mktemp("natural"))


def reference_args(root: Path) -> list[str]:
    return ["reference=image_folder", f"reference.root={root}", "reference.max_per_class=10"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def job_metrics(job: Path) -> dict[str, float]:
    """The metrics of one job recomputed by hand from its own files."""
    gen = json.loads((job / "metrics.json").read_text())
    ev = [r for r in read_csv(job / "evaluation" / "path_similarity.csv") if r["source"] == "prototype"]
    images = torch.load(job / "prototypes.pt", weights_only=True)["images"].double()
    neighbours = [((x[:, 1:] - x[:, :-1]).abs().mean() + (x[:, :, 1:] - x[:, :, :-1]).abs().mean()) / 2 for x in images]
    return {"sharpness": statistics.fmean(float(v) for v in neighbours),  # in float64: the run's is float32
            "target_prob": statistics.fmean(r["target_prob"] for r in gen),
            "top1": statistics.fmean(r["target_rank"] == 1 for r in gen),
            "spearman/mean": statistics.fmean(float(r["spearman/mean"]) for r in ev),
            "spearman/percentile": statistics.fmean(float(r["spearman/percentile"]) for r in ev),
            "l1/mean": statistics.fmean(float(r["l1/mean"]) for r in ev)}


def test_report_of_a_plain_sweep_equals_numbers_recomputed_from_job_files(tmp_path, reference_root):
    sweep = tmp_path / "sweep"
    proc = cli("generate", "-m", *FAST, *reference_args(reference_root), "optimizer.lr=0.02,0.1", "seed=0,1",
               f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 completed" in proc.stdout + proc.stderr  # the sweep's closing summary line
    log = (sweep / "0" / "generate.log").read_text()  # what a cluster log file shows: no library noise
    assert "Tip:" not in log and "LeafSpec" not in proc.stderr and "smaller than the logging interval" not in proc.stderr
    proc = cli("report", f"sweep_dir={sweep}", "classes=[class_0,2]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = sweep / "report"
    runs = read_csv(out / "runs.csv")
    assert [(r["optimizer.lr"], r["seed"], r["status"]) for r in runs] == [
        ("0.02", "0", "completed"), ("0.02", "1", "completed"), ("0.1", "0", "completed"), ("0.1", "1", "completed")]
    expected = {r["run"]: job_metrics(sweep / r["run"].split("/")[-1]) for r in runs}
    for r in runs:
        for metric, value in expected[r["run"]].items():
            rel = 1e-6 if metric == "sharpness" else 1e-9
            assert float(r[metric]) == pytest.approx(value, rel=rel, abs=1e-12), (r["run"], metric)
    sens = read_csv(out / "sensitivity.csv")
    assert [s["optimizer.lr"] for s in sens] == ["0.02", "0.1"] and "seed" not in sens[0]
    for s in sens:
        seeds = [expected[r["run"]] for r in runs if r["optimizer.lr"] == s["optimizer.lr"]]
        assert int(s["n"]) == 2 and int(s["failed"]) == 0
        for metric in ("target_prob", "spearman/mean", "spearman/percentile", "l1/mean"):
            values = [m[metric] for m in seeds]
            assert float(s[f"{metric}_mean"]) == pytest.approx(statistics.fmean(values), rel=1e-9)
            assert float(s[f"{metric}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-12)
    md = (out / "sensitivity.md").read_text()
    lr02 = next(s for s in sens if s["optimizer.lr"] == "0.02")
    assert f"{float(lr02['spearman/mean_mean']):.3f} ± {float(lr02['spearman/mean_std']):.3f}" in md
    assert "\\begin{tabular}" in (out / "sensitivity.tex").read_text()
    for metric in ("target-prob", "spearman-mean", "l1-mean", "spearman-percentile"):
        assert (out / "plots" / f"optimizer.lr__{metric}.png").stat().st_size > 5000
    assert (out / "prototypes_by_setting.png").stat().st_size > 5000
    assert "Swept: `optimizer.lr`, `seed`" in (out / "report.md").read_text()


def test_a_failing_job_is_recorded_the_sweep_goes_on_and_the_report_shows_it(tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli("generate", "-m", *FAST, "regularizer=[tv]", "regularizer.tv.weight=1,1e308,2", f"hydra.sweep.dir={sweep}",
               "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")  # jobs in parallel processes
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = {j: read_record(sweep / j)["status"] for j in ("0", "1", "2")}
    assert status == {"0": "completed", "1": "failed", "2": "completed"}
    assert "'tv' became non-finite" in read_record(sweep / "1")["error"]
    assert [line for line in proc.stderr.splitlines() if line.startswith("protoscope:")] == [
        f"protoscope: job 1 failed: DivergenceError: {read_record(sweep / '1')['error'].split(': ', 1)[1]}"]
    proc = cli("report", f"sweep_dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sens = {s["regularizer.tv.weight"]: s for s in read_csv(sweep / "report" / "sensitivity.csv")}
    huge = next(k for k in sens if "308" in k)  # a finite weight (so it passes the range check) whose loss overflows
    assert (sens[huge]["n"], sens[huge]["failed"]) == ("0", "1")
    assert (sens["1"]["n"], sens["1"]["failed"]) == ("1", "0")
    report = (sweep / "report" / "report.md").read_text()
    assert "| `1` | failed | regularizer.tv.weight=1e+308 | DivergenceError: loss term 'tv' became non-finite" in report


def test_sharpness_is_the_mean_neighbour_difference_and_unreadable_prototypes_give_none(tmp_path):
    from protoscope.studies.runs import run_metrics

    image = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # vertical differences 0, horizontal 1: (0 + 1) / 2
    torch.save({"images": torch.cat([image, torch.zeros_like(image)])}, tmp_path / "prototypes.pt")
    assert run_metrics(tmp_path)["sharpness"] == pytest.approx((0.5 + 0.0) / 2)
    (tmp_path / "prototypes.pt").write_bytes(b"not a torch file")
    assert "sharpness" not in run_metrics(tmp_path)


def test_paper_recipe_studies_select_on_val_with_seed_0_and_report_on_test_with_held_out_seed_1(tmp_path,
                                                                                             reference_root):
    """study=paper_search + template=paper_search select by the documented rule; study=paper_final scores the
    winner on the other part of the reference with another seed (experiments/paper)."""
    search, final = tmp_path / "search", tmp_path / "final"
    common = [*FAST, *reference_args(reference_root), "reference.max_per_class=20"]
    proc = cli("generate", "-m", "+study=paper_search", *common, "recipe=default,no_blur,tv0",
               f"hydra.sweep.dir={search}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in search.iterdir() if p.name.isdigit())
    configs = [yaml.safe_load((job / "config.yaml").read_text()) for job in jobs]
    assert sorted(c["tag"] for c in configs) == ["default", "no_blur", "tv0"]
    assert {(c["reference"]["part"], c["seed"]) for c in configs} == {("val", 0)}
    assert {c["tag"]: bool(c.get("param_ops")) for c in configs} == {"default": True, "no_blur": False, "tv0": True}
    proc = cli("report", "template=paper_search", f"sweep_dir={search}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_recipe = {c["tag"]: job_metrics(job) for c, job in zip(configs, jobs)}
    eligible = {k: m for k, m in by_recipe.items() if m["top1"] == 1}
    selection = json.loads((search / "report" / "selection.json").read_text())
    if eligible:
        winner = max(eligible, key=lambda k: eligible[k]["spearman/percentile"])
        assert selection["overrides"] == [f"recipe={winner}"]
    else:
        assert selection["setting"] is None
        winner = "default"
    sensitivity = (search / "report" / "sensitivity.md").read_text()
    assert "sharpness" in sensitivity.splitlines()[0] and "spearman/concat_percentile" in sensitivity

    proc = cli("generate", "-m", "+study=paper_final", *common, f"recipe={winner}", f"hydra.sweep.dir={final}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = yaml.safe_load((final / "0" / "config.yaml").read_text())
    assert (config["tag"], config["reference"]["part"], config["seed"]) == (winner, "test", 1)
    proc = cli("report", "template=paper_final", f"sweep_dir={final}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (final / "report" / "selection.json").exists()  # the test part reports, it does not select


KILL_ARGS = [*FAST, "schedule.prototype_steps=150", "checkpoint_every=5", "checkpoint_minutes=0"]


def test_sigkill_then_relaunch_resumes_to_uninterrupted_prototypes_and_skips_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *KILL_ARGS, "seed=0,1,2", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([sys.executable, "-m", "protoscope.generate", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (read_record(sweep / "1") or {}).get("step") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # until job 1 has saved its state once
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = read_record(sweep / "1")
    assert killed["status"] == "running" and 0 < killed["step"] < killed["total_steps"]  # really mid-run
    assert read_record(sweep / "0")["status"] == "completed" and not (sweep / "2" / "run.json").exists()
    first_end = read_record(sweep / "0")["ended"]

    again = cli("generate", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already holds this completed run: skipped" in again.stdout + again.stderr
    assert read_record(sweep / "0")["ended"] == first_end  # job 0 was not rerun
    resumed = read_record(sweep / "1")
    assert resumed["status"] == "completed" and [a["status"] for a in resumed["attempts"]] == ["killed", "completed"]
    assert read_record(sweep / "2")["status"] == "completed"
    uninterrupted = run_generation(compose_cfg("generate", [*KILL_ARGS, "seed=1"], tmp_path / "reference"))
    images = torch.load(sweep / "1" / "prototypes.pt", weights_only=True)["images"]
    torch.testing.assert_close(images, uninterrupted.images, atol=0, rtol=0)


class InterruptAt:
    """A callback that sends this process SIGINT after step ``step`` (as Ctrl-C would)."""

    def __new__(cls, step: int):
        import pytorch_lightning as pl

        class _Sender(pl.Callback):
            def on_train_batch_end(self, trainer, *args):
                if trainer.global_step == step:
                    os.kill(os.getpid(), signal.SIGINT)
        return _Sender()


def test_resuming_with_another_config_is_refused_naming_the_difference(tmp_path):
    from protoscope.errors import RunInterrupted

    cfg = compose_cfg("generate", [*FAST, "checkpoint_every=5"], tmp_path)
    with pytest.raises(RunInterrupted):
        run_generation(cfg, callbacks=[InterruptAt(6)])
    changed = compose_cfg("generate", [*FAST, "checkpoint_every=5", "optimizer.lr=0.1"], tmp_path)
    with pytest.raises(ConfigError, match=r"optimizer\.lr: 0\.05 -> 0\.1.*resume with the same settings"):
        run_generation(changed)
    run_generation(cfg)  # the same config still resumes
    with pytest.raises(ConfigError, match=r"holds a completed run with another config \(optimizer\.lr: 0\.05 -> 0\.1"):
        run_generation(changed)


def test_two_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "PROJECT_ROOT": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-m", "protoscope.generate", *FAST], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    runs = sorted((tmp_path / "outputs" / "generate").iterdir())
    assert len(runs) == 2
    assert all(read_record(r)["status"] == "completed" for r in runs)


def test_the_slurm_preset_composes_with_site_values(tmp_path, monkeypatch):
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(Path(__file__).parents[1] / "conf", conf)
    (conf / "site" / "slurm.yaml").write_text("partition: gpu-long\naccount: lab42\ntimeout_min: 600\n"
                                              "setup: [source .venv/bin/activate]\n")
    monkeypatch.setenv("PROTOSCOPE_CONF", str(conf))
    from hydra import compose, initialize_config_dir

    import protoscope.resolvers  # noqa: F401  (the preset's resolvers)

    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("generate", ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                                   "hydra.launcher.mem_gb=200"], return_hydra_config=True)
        cpu = compose("generate", ["hydra/launcher=slurm", "trainer=cpu"], return_hydra_config=True).hydra.launcher
        spawn = compose("generate", ["hydra/launcher=slurm", "trainer=ddp_spawn"], return_hydra_config=True)
    assert cpu.gpus_per_node is None and cpu.tasks_per_node == 1  # no GPU asked for a CPU trainer
    assert spawn.hydra.launcher.tasks_per_node == 1  # ddp_spawn's first process starts the others
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.account, launcher.timeout_min) == ("gpu-long", "lab42", 600)  # site file
    assert launcher.mem_gb == 200 and launcher.array_parallelism == 32  # command line, preset
    assert launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4  # one SLURM task per DDP rank
    assert launcher.setup == ["source .venv/bin/activate"] and launcher.max_num_timeout == 3


def test_an_sbatch_refusal_becomes_the_setting_to_change():
    from protoscope.slurm import refusal_message

    gres = refusal_message("sbatch: error: Invalid generic resource (gres) specification\n")
    assert gres.startswith("sbatch refused the jobs (Invalid generic resource (gres) specification): ")
    assert "trainer=cpu" in gres
    part = refusal_message("sbatch: error: invalid partition specified: gpu\nsbatch: error: Batch job submission "
                           "failed: Invalid partition name specified")
    assert "partition in conf/site/slurm.yaml" in part and "invalid partition specified: gpu" in part
    assert "mem_gb" in refusal_message("sbatch: error: Memory specification can not be satisfied")


def test_ddp_inside_a_local_sweep_is_refused_before_any_job(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(ConfigError, match="re-launch the sweep in every rank.*ddp_spawn"):
        check_strategy({"strategy": "ddp"}, multirun=True)
    check_strategy({"strategy": "ddp"}, multirun=False)
    check_strategy({"strategy": "ddp_spawn"}, multirun=True)
    proc = cli("generate", "-m", *FAST, "trainer=ddp", "seed=0,1", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "trainer=ddp_spawn" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_sweep_value_is_the_configured_metric_with_the_top1_constraint():
    cfg = compose_cfg("generate", [*FAST, "sweep_metric.name=spearman/percentile", "sweep_metric.require_top1=true",
                                   "sweep_metric.infeasible=-5"])
    metrics = {"spearman/percentile": 42.0, "all_top1": 1.0, "target_prob": 0.9}
    assert sweep_value(cfg, metrics) == 42.0
    assert sweep_value(cfg, {**metrics, "all_top1": 0.0}) == -5.0


def test_a_list_of_sweep_metrics_gives_the_weakest_of_them():
    both = compose_cfg("generate", [*FAST, "sweep_metric.name=[spearman/percentile,l1/percentile]"])
    metrics = {"spearman/percentile": 12.0, "l1/percentile": 30.0, "all_top1": 1.0}
    assert sweep_value(both, metrics) == 12.0
    assert sweep_value(both, {**metrics, "spearman/percentile": 40.0}) == 30.0
    assert math.isnan(sweep_value(both, {"spearman/percentile": 12.0}))  # a goal the run lacks
    lowest = compose_cfg("generate", [*FAST, "sweep_metric.name=[a,b]", "sweep_metric.direction=minimize"])
    assert sweep_value(lowest, {"a": 1.0, "b": 3.0}) == 3.0


def test_optuna_search_gets_the_configured_metric_of_each_job(tmp_path, reference_root):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="optional extra: pip install -e '.[optuna]'")
    sweep = tmp_path / "search"
    proc = cli("generate", "-m", "+study=search", *FAST, *reference_args(reference_root), "sweep_metric.require_top1=false",
               "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = [job_metrics(sweep / str(j))["spearman/percentile"] for j in range(3)]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(values), rel=1e-9)
    lrs = {read_record(sweep / str(j))["overrides"][0] for j in range(3)}
    assert len(lrs) == 3 and all(o.startswith("optimizer.lr=") for o in lrs)  # sampled, not a grid


def test_progress_off_a_terminal_is_a_line_every_n_steps_with_rate_and_eta(tmp_path, caplog):
    import logging

    cfg = compose_cfg("generate", [*FAST, "trainer.enable_progress_bar=true", "progress.mode=log",
                                   "progress.every_n_steps=5"], tmp_path)
    with caplog.at_level(logging.INFO, logger="protoscope"):
        run_generation(cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split()[1] for line in lines] == ["5/12", "10/12", "12/12"]
    assert all("steps/s" in line and "ETA" in line for line in lines)


def test_report_logs_its_tables_and_figures_as_one_wandb_run_in_the_sweep_group(tmp_path):
    from protoscope.wandb_offline import read_offline_run

    sweep = tmp_path / "sweep"
    assert cli("generate", "-m", *FAST, "seed=0,1", f"hydra.sweep.dir={sweep}").returncode == 0
    proc = cli("report", f"sweep_dir={sweep}", "logger=wandb")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((sweep / "report" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = read_offline_run(runs[0], wait_for="report/grid")
    assert logged["run"]["group"] == "sweep/sweep" and logged["run"]["name"] == "report"
    table = json.loads((runs[0] / "files" / logged["summary"]["report/runs/path"]).read_text())
    assert len(table["data"]) == 2 and "target_prob" in table["columns"]
    assert logged["summary"]["report/grid/count"] == 1  # the prototype grid went along


def test_a_sweep_still_running_is_reported_as_far_as_it_got(tmp_path):
    """A job whose live process is still writing counts as running; one whose process is gone as killed."""
    import socket

    from protoscope.studies.report import run_report

    sweep = tmp_path / "sweep"
    assert cli("generate", "-m", *FAST, "optimizer.lr=0.05,0.1", f"hydra.sweep.dir={sweep}").returncode == 0
    for job, pid in (("2", os.getpid()), ("3", 2**22 + 17)):  # this test's process is alive; the other is not
        (sweep / job).mkdir()
        record = {**read_record(sweep / "1"), "status": "running", "pid": pid, "host": socket.gethostname(),
                  "overrides": [o.replace("optimizer.lr=0.1", "optimizer.lr=0.2") for o in read_record(sweep / "1")["overrides"]]}
        (sweep / job / "run.json").write_text(json.dumps(record))
    report = run_report(compose_cfg("report", [f"sweep_dir={sweep}"]))
    status = {r.dir.name: r.status for r in report.study.runs}
    assert status == {"0": "completed", "1": "completed", "2": "running", "3": "killed"}
    sens = {s["optimizer.lr"]: s for s in read_csv(sweep / "report" / "sensitivity.csv")}
    assert (sens["0.2"]["n"], sens["0.2"]["failed"], sens["0.2"]["running"]) == ("0", "1", "1")
    assert "(+1 running)" in (sweep / "report" / "sensitivity.md").read_text()
