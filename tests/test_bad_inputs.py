"""Every bad input is one line on stderr, printed once, exit 2, no traceback, before anything heavy starts;
Ctrl-C at any time is one line and exit 130, SIGTERM one line and 143; log files show progress."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = ["model=tiny_cnn", "classes=[0]", "logger=none", "trainer.accelerator=cpu"]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", **extra}


def one_line(proc_rc: int, stdout: str, stderr: str, code: int) -> str:
    """The single stderr line of a finished command (asserting status, one line, once, no traceback)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc_rc == code, stderr[-3000:]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("protoscope: ") and "Traceback" not in stderr + stdout
    assert lines[0] not in stdout  # printed once: not repeated on stdout
    return lines[0]


def run(command: str, *args: str, code: int = 2, extra_env: dict[str, str] | None = None, cwd=None) -> str:
    proc = subprocess.run([sys.executable, "-m", f"protoscope.{command}", *args], capture_output=True, text=True,
                          timeout=300, env=env(**(extra_env or {})), cwd=cwd)
    return one_line(proc.returncode, proc.stdout, proc.stderr, code)


# --- a range violation in each config group, and misspelt keys and groups ----------------------------------
@pytest.mark.parametrize("command, args, expected", [
    ("generate", ["schedule.prototype_steps=-5"], r"ConfigError: schedule\.prototype_steps=-5: must be >= 0"),
    ("generate", ["image_size=0"], r"ConfigError: image_size=0: must be a whole number >= 8 \(the model's minimum\)"),
    ("generate", ["optimizer.lr=0"], r"ConfigError: optimizer\.lr=0: must be > 0"),
    ("generate", ["regularizer.tv.weight=-1"], r"ConfigError: regularizer\.tv\.weight=-1: must be >= 0"),
    ("generate", ["seeds_per_class=0"], r"ConfigError: seeds_per_class=0: must be >= 1"),
    ("generate", ["transform.degrees=-10"], r"ConfigError: transform\.degrees=-10: must be >= 0"),
    ("generate", ["param.init_std=-0.5"], r"ConfigError: param\.init_std=-0\.5: must be >= 0"),
    ("generate", ["progress.every_n_steps=0"], r"ConfigError: progress\.every_n_steps=0: must be >= 1"),
    ("generate", ["speed.memory_fraction=1.5"], r"ConfigError: speed\.memory_fraction=1\.5: must be <= 1"),
    ("generate", ["reference=bundled_photos", "reference.max_per_class=0"],
     r"ConfigError: reference\.max_per_class=0: must be >= 1"),
    ("generate", ["objective=hybrid", "objective.balance=-1"], r"ConfigError: objective\.balance=-1: must be >= 0"),
    ("generate", ["trainer.log_every_n_steps=0"], r"ConfigError: trainer\.log_every_n_steps=0: must be >= 1"),
    ("generate", ["-m", "optimizer.lr=0.1,-2"], r"ConfigError: optimizer\.lr=-2 \(a value of its sweep\): must be > 0"),
    ("generate", ["optimiser.lr=0.02"], r"ConfigError: optimiser\.lr=0\.02: .*did you mean optimizer\.lr\b"),
    ("generate", ["referance=bundled_photos"], r"ConfigError: referance=bundled_photos: .*did you mean reference\?"),
    ("train", ["epochs=0"], r"ConfigError: epochs=0: must be >= 1"),
    ("train", ["batch_size=0"], r"ConfigError: batch_size=0: must be >= 1"),
    ("train", ["lr=-0.1"], r"ConfigError: lr=-0\.1: must be > 0"),
    ("train", ["train_data.val_size=-1"], r"ConfigError: train_data\.val_size=-1: must be >= 0"),
    ("train", ["epoch=3"], r"ConfigError: epoch=3: epoch is not a setting of train: did you mean epochs\?"),
    ("lucent", ["steps=0"], r"ConfigError: steps=0: must be >= 1"),
    ("compare", ["weights.pixel=-1"], r"ConfigError: weights\.pixel=-1: must be >= 0"),
    ("report", ["max_grid_rows=0"], r"ConfigError: max_grid_rows=0: must be >= 1"),
])
def test_out_of_range_or_misspelt_settings_fail_in_one_line(tmp_path, command, args, expected):
    extra = [f"sweep_dir={tmp_path}"] if command == "report" else []
    folder = "hydra.sweep.dir" if "-m" in args else "hydra.run.dir"
    start = time.monotonic()
    line = run(command, f"{folder}={tmp_path / 'out'}", *extra, *args)
    assert re.search(expected, line), line
    assert "+optimiser" not in line and "To append" not in line  # Hydra's advice to append is the wrong fix
    assert not (tmp_path / "out").exists()  # refused before anything started
    assert time.monotonic() - start < 60


# --- unreadable images name the file ---------------------------------------------------------------------
def _folder_with_a_broken_png(root: Path) -> Path:
    (root / "class_0").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "class_0" / "good.png")
    (root / "class_0" / "broken.png").write_bytes(b"not a png at all")
    return root / "class_0" / "broken.png"


def test_an_unreadable_image_to_evaluate_is_named(tmp_path):
    broken = _folder_with_a_broken_png(tmp_path / "imgs")
    line = run("evaluate", f"images={tmp_path / 'imgs'}", "model=tiny_cnn", f"out_dir={tmp_path / 'out'}")
    assert line.startswith(f"protoscope: ConfigError: image {broken} cannot be read (UnidentifiedImageError"), line
    assert "replace or delete it" in line


def test_an_unreadable_reference_image_is_named(tmp_path):
    broken = _folder_with_a_broken_png(tmp_path / "ref")
    line = run("generate", *TINY, "reference=image_folder", f"reference.root={tmp_path / 'ref'}",
               f"hydra.run.dir={tmp_path / 'out'}")
    assert line.startswith(f"protoscope: ConfigError: image {broken} cannot be read"), line
    assert not (tmp_path / "out").exists()


# --- a torchvision built for another torch -----------------------------------------------------------------
def test_a_torchvision_that_does_not_fit_torch_names_both_versions_and_the_fix(tmp_path):
    """A module named torchvision first on the path fails at import as a CUDA build on a CPU torch does."""
    import torch

    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    (fake / "version.py").write_text("__version__ = '0.99.0+cu999'\n")
    path = os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])
    line = run("train", "epochs=1", f"hydra.run.dir={tmp_path / 'out'}", extra_env={"PYTHONPATH": path})
    assert line.startswith("protoscope: EnvironmentMismatch: torchvision 0.99.0+cu999 does not fit torch "
                           f"{torch.__version__} (operator torchvision::nms does not exist)"), line
    assert f"pip install torch=={torch.__version__.split('+')[0]} torchvision==" in line
    assert "--index-url https://download.pytorch.org/whl/cpu" in line


# --- signals: one line, 128 + the signal number ------------------------------------------------------------
def _signal_after(args: list[str], signum: int, seconds: float, cwd=None,
                  log_dir: Path | None = None) -> tuple[int, str, str, float]:
    """Send ``signum`` ``seconds`` after the start (with ``log_dir``: after the Hydra job's log file appears there,
    i.e. inside the task)."""
    proc = subprocess.Popen([sys.executable, "-m", *args], env=env(), text=True, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while log_dir is not None and not list(log_dir.glob("*.log")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    time.sleep(seconds)
    sent = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err, time.monotonic() - sent


@pytest.mark.parametrize("seconds", [1.0, 4.0])
def test_ctrl_c_during_start_up_is_one_line_and_130(tmp_path, seconds):
    """1 s: inside the start-up imports; 4 s: importing torch or composing the config."""
    rc, out, err, took = _signal_after(["protoscope.generate", *TINY, "schedule.prototype_steps=100000",
                                        f"hydra.run.dir={tmp_path / 'out'}"], signal.SIGINT, seconds)
    line = one_line(rc, out, err, 130)
    assert re.match(r"protoscope: (Interrupted|RunInterrupted): SIGINT", line), line
    assert took < 30


@pytest.mark.parametrize("command, args, running", [
    ("evaluate", ["model=tiny_cnn", "images=IMGS"], False),
    ("report", ["sweep_dir=TMP"], False),
    ("compare", [*TINY, "schedule.prototype_steps=100000"], False),
    ("lucent", ["model=tiny_cnn", "classes=[0]", "steps=100000"], False),
    ("compare", [*TINY, "schedule.prototype_steps=100000"], True),
    ("lucent", ["model=tiny_cnn", "classes=[0]", "steps=100000"], True),
])
def test_sigterm_stops_every_command_in_one_line_with_143(tmp_path, command, args, running):
    """1 s after the start (inside the start-up imports: ``evaluate`` and ``report`` end with their expected
    errors in under 3 s on an idle fast CPU), or (``running``) 2 s after the Hydra task began (its log file exists).
    A signal while the config is composed is covered by the Ctrl-C test above (4 s)."""
    _folder_with_a_broken_png(tmp_path / "unused")
    imgs = tmp_path / "imgs" / "class_0"
    imgs.mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(imgs / "a.png")
    args = [a.replace("IMGS", str(tmp_path / "imgs")).replace("TMP", str(tmp_path)) for a in args]
    out_key = "out_dir" if command == "evaluate" else "hydra.run.dir"
    rc, out, err, took = _signal_after([f"protoscope.{command}", *args, f"{out_key}={tmp_path / 'out'}"],
                                       signal.SIGTERM, 2.0 if running else 1.0,
                                       log_dir=tmp_path / "out" if running else None)
    line = one_line(rc, out, err, 143)
    assert re.match(r"protoscope: (Interrupted|RunInterrupted): SIGTERM", line), line
    assert took < 30


def _image_classes(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for name, (lo, hi) in {"bright": (170, 256), "dark": (0, 90)}.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(lo, hi, size=(28, 28, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.is_file() and text in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_sigterm_stops_train_within_seconds_saving_a_state_that_resumes(tmp_path):
    root = _image_classes(tmp_path / "imgs", 40)
    run_dir = tmp_path / "run"
    args = ["train_data=image_folder", f"train_data.root={root}", "batch_size=1", "epochs=3", "logger=none",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "progress.every_n_steps=5",
            f"hydra.run.dir={run_dir}"]
    log_file = tmp_path / "train.out"
    with open(log_file, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "protoscope.train", *args], env=env(), text=True,
                                stdout=fh, stderr=subprocess.PIPE)
        _wait_for(log_file, "step 10/", proc)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    line = one_line(proc.returncode, log_file.read_text(), err, 143)
    m = re.match(r"protoscope: RunInterrupted: SIGTERM at step (\d+): the state is saved; resume with: "
                 r"protoscope-train .*hydra\.run\.dir=", line)
    assert m and int(m.group(1)) >= 10, line
    assert took < 30 and (run_dir / "checkpoints" / "last.ckpt").is_file()
    # other settings in the same folder are refused; the same command resumes from the saved step and completes
    other = subprocess.run([sys.executable, "-m", "protoscope.train", *args, "lr=0.01"], env=env(), text=True,
                           capture_output=True, timeout=300)
    assert "was saved by a training with other settings" in one_line(other.returncode, other.stdout, other.stderr, 2)
    finish = subprocess.run([sys.executable, "-m", "protoscope.train", *args], env=env(), text=True,
                            capture_output=True, timeout=600)
    assert finish.returncode == 0, finish.stderr[-3000:]
    text = finish.stdout + finish.stderr
    assert "continuing from the state saved in" in text and f"continuing at step {m.group(1)} of 192" in text
    assert (run_dir / "model.pt").is_file() and not (run_dir / "checkpoints" / "last.ckpt").exists()


# --- progress in a log file, whatever the bar flag ----------------------------------------------------------
def _progress_lines(text: str) -> tuple[list[str], list[int]]:
    starts = re.findall(r"start-up done after \S+: (\w+) step 1 of (\d+) begins", text)
    steps = [int(s) for s in re.findall(r"\] - step (\d+)/\d+ \(", text)]
    return starts, steps


def test_log_file_shows_start_and_every_n_steps_with_the_bar_off(tmp_path):
    log_file = tmp_path / "generate.out"
    with open(log_file, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "protoscope.generate", *TINY, "param=pixel",
                               "schedule.baseline_steps=0", "schedule.prototype_steps=35",
                               "trainer.enable_progress_bar=false", "progress.every_n_steps=10",
                               f"hydra.run.dir={tmp_path / 'gen'}"], env=env(), stdout=fh, stderr=subprocess.STDOUT,
                              timeout=300)
    text = log_file.read_text()
    assert proc.returncode == 0, text[-3000:]
    starts, steps = _progress_lines(text)
    assert starts == [("generate", "35")] and steps == [10, 20, 30, 35], text[-3000:]
    assert text.index("start-up done") < text.index("] - step 10/")
    # the same lines in the run's own log file
    assert _progress_lines((tmp_path / "gen" / "generate.log").read_text())[1] == [10, 20, 30, 35]

    root = _image_classes(tmp_path / "imgs", 6)  # train: 12 images, 8 for training, batch 2 -> 4 steps an epoch
    proc = subprocess.run([sys.executable, "-m", "protoscope.train", "train_data=image_folder",
                           f"train_data.root={root}", "train_data.val_fraction=0.34", "batch_size=2", "epochs=3",
                           "logger=none", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                           "progress.every_n_steps=5", f"hydra.run.dir={tmp_path / 'train'}"], env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    starts, steps = _progress_lines(proc.stdout + proc.stderr)
    assert len(starts) == 1 and starts[0][0] == "train", proc.stdout[-3000:]
    total = int(starts[0][1])
    assert total >= 6 and steps == [*range(5, total + 1, 5), *([total] if total % 5 else [])], proc.stdout[-3000:]


@pytest.mark.parametrize("config, group", [("train", "shortcut"), ("audit", "mark")])
def test_a_whole_image_mark_passes_the_range_check_and_a_negative_size_does_not(config, group):
    """Stripes span the image with height=width=0; the range check must accept that (it once said '>= 1')."""
    from conftest import compose_cfg

    from protoscope.config_ranges import check_ranges
    from protoscope.errors import ConfigError

    prefix = "shortcut.mark" if group == "shortcut" else "mark"
    extra = ["shortcut.target=1"] if group == "shortcut" else []
    check_ranges(compose_cfg(config, [f"{group}=stripes", *extra]))
    with pytest.raises(ConfigError, match=rf"{re.escape(prefix)}\.height=-1: must be >= 0"):
        check_ranges(compose_cfg(config, [f"{group}=stripes", *extra, f"{prefix}.height=-1"]))
