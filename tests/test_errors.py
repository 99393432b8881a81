"""Bad input gets a clear error before any optimisation starts; divergence names step and term."""

from __future__ import annotations

import re

import pytest
import torch
from hydra.errors import MissingConfigException

from conftest import FAST, compose_cfg
from protoscope.errors import CheckpointError, ConfigError, DivergenceError
from protoscope.generation.pipeline import prepare, run_generation


def fails_before_optimising(tmp_path, overrides, error, match):
    cfg = compose_cfg("generate", [*FAST, *overrides], tmp_path)
    with pytest.raises(error, match=match):
        prepare(cfg)
    with pytest.raises(error, match=match):
        run_generation(cfg)
    assert not (tmp_path / "prototypes.pt").exists()


def test_unknown_model_config_lists_choices(tmp_path):
    with pytest.raises(MissingConfigException, match="resnet18"):
        compose_cfg("generate", ["model=no_such_model"], tmp_path)


def test_unknown_torchvision_architecture(tmp_path):
    fails_before_optimising(tmp_path, ["model=torchvision", "model.arch.name=resnet_9000", "model.arch.weights=null"],
                            ConfigError, r"unknown torchvision model 'resnet_9000'.*resnet18")


def test_class_name_the_model_does_not_have(tmp_path):
    fails_before_optimising(tmp_path, ["classes=[clas_3]"], ConfigError, r"'clas_3' is not a class.*class_3")


def test_class_index_out_of_range(tmp_path):
    fails_before_optimising(tmp_path, ["classes=[10]"], ConfigError, r"index 10 is out of range.*10 classes")


def test_image_size_the_model_cannot_take(tmp_path):
    fails_before_optimising(
        tmp_path, ["model=torchvision", "model.arch.name=vit_b_16", "model.arch.weights=null", "model.class_names=imagenet",
                   "classes=[0]", "image_size=64"],
        ConfigError, r"cannot take 64x64 images.*image_size=224")


def test_too_small_image_size(tmp_path):
    fails_before_optimising(tmp_path, ["image_size=4"], ConfigError, "too small")


def _ckpt_overrides(path):
    return ["model.checkpoint=" + str(path)]


def test_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a checkpoint")
    fails_before_optimising(tmp_path, _ckpt_overrides(bad), CheckpointError, "cannot read checkpoint")


def test_missing_checkpoint(tmp_path):
    fails_before_optimising(tmp_path, _ckpt_overrides(tmp_path / "nope.pt"), CheckpointError, "does not exist")


def test_mismatched_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), path)
    fails_before_optimising(tmp_path, _ckpt_overrides(path), CheckpointError, "does not fit the architecture")


class Payload:
    """An arbitrary pickled object: weights_only=True must refuse to run its code."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Payload()}, path)
    fails_before_optimising(tmp_path, _ckpt_overrides(path), CheckpointError, "weights_only=True")
    assert "pickled code ran" not in capsys.readouterr().out


def test_valid_checkpoint_loads(tmp_path):
    from protoscope.models.builders import small_cnn

    net = small_cnn(in_channels=3, num_classes=10, width=8, init_seed=5)
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, path)
    cfg = compose_cfg("generate", [*FAST, *_ckpt_overrides(path)], tmp_path)
    classifier, _, _ = prepare(cfg)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(classifier.network.net(x), net.eval()(x))


def test_non_finite_loss_names_step_and_term_and_keeps_config(tmp_path):
    cfg = compose_cfg("generate", [*FAST, "regularizer=[tv]", "regularizer.tv.weight=nan", "schedule.baseline_steps=3"],
                      tmp_path)
    with pytest.raises(DivergenceError, match=r"'tv' became non-finite at step 3"):
        run_generation(cfg)
    assert (tmp_path / "config.yaml").is_file()


def test_cli_reports_bad_input_in_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "protoscope.generate", *FAST, "classes=[no_such_class]", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "ConfigError: class 'no_such_class' is not a class of this model" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the command line: every bad input is one line, once, exit status 2, before the model loads ------
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402


def one_line_error(task: str, *args: str, cwd=None) -> str:
    proc = subprocess.run([sys.executable, "-m", f"protoscope.{task}", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "WANDB_MODE": "offline"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stdout.count("protoscope:") == 0
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    # its default: experiment=natural's
    (["optimizer.lr=abc"], r"optimizer\.lr=abc: optimizer\.lr must be a number \(its default is 0\.03\)"),
    (["regularizer=[tvv]"], r"there is no regularizer 'tvv' \(conf/regularizer/\); choose from: bn_layers, bn_stats, "
                            r".*tv, tv_l1$"),
    (["regularizer=[tv,blur]"], r"there is no regularizer 'blur' .*tv_l1 \(blur is in conf/param_ops/: "
                                r"param_ops=\[blur\]\)"),
    (["model=no_such_model"], r"there is no model 'no_such_model'.*choose from: .*efficientnet_lite0.*tiny_cnn"),
    (["reference=image_folder"], r"reference\.root is not set: add reference\.root=<value>"),
    (["+reference.part=val"], r"reference\.part given but no reference chosen: add reference=<name> .*imagenette"),
    (["model=fashion_cnn"], r"class 'Egyptian cat' is not a class of this model.*T-shirt/top, Trouser.*"
                            r"Ankle boot; give some of them .* or classes=all"),
    (["optimizer.lrr=0.1"], r"optimizer\.lrr=0\.1: optimizer\.lrr is not a setting of generate: did you mean "
                            r"optimizer\.lr\b"),
    (["progress.mode=fancy"], r"progress\.mode=fancy: choose one of auto, bar, log, none"),
])
def test_bad_command_lines_fail_in_one_line_with_the_fix(tmp_path, args, expected):
    line = one_line_error("generate", f"hydra.run.dir={tmp_path}", "model=tiny_cnn", *args)  # Hydra keys first
    assert re.search(expected, line), line
    assert not (tmp_path / "run.json").exists()  # refused before anything started


def test_gpu_trainer_without_a_gpu_names_trainer_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: trainer=gpu is valid here")
    args = [a for a in FAST if not a.startswith("trainer.accelerator")]
    line = one_line_error("generate", *args, "trainer=gpu", f"hydra.run.dir={tmp_path}")
    assert "trainer=gpu, but torch sees no CUDA GPU" in line and "use trainer=cpu" in line


def test_deterministic_on_a_gpu_is_refused_before_start_up(tmp_path):
    args = [a for a in FAST if not a.startswith("trainer.accelerator")]
    line = one_line_error("generate", *args, "trainer=gpu", "trainer.deterministic=true", f"hydra.run.dir={tmp_path}")
    assert "trainer.deterministic=true on a GPU" in line and "trainer=cpu" in line


def _run_folder(tmp_path, payload: bytes | None = None, obj=None):
    run = tmp_path / "run"
    run.mkdir()
    if payload is not None:
        (run / "prototypes.pt").write_bytes(payload)
    else:
        torch.save(obj, run / "prototypes.pt")
    return run


@pytest.mark.parametrize("kind, expected", [
    ("truncated", r"is not a readable torch file, truncated or corrupt"),
    ("random", r"is not a readable torch file, truncated or corrupt"),
    ("missing_keys", r"lacks class_indices, class_names, seeds \(has images\): not written by protoscope-generate"),
    ("not_a_dict", r"holds a list, not protoscope's prototype record"),
    ("pickled_code", r"holds pickled objects that are not tensors \(refused: weights_only=True\)"),
])
def test_corrupt_or_foreign_prototypes_files_are_refused_with_their_reason(tmp_path, kind, expected):
    good = {"images": torch.rand(2, 3, 8, 8), "class_indices": [0, 1], "class_names": ["a", "b"], "seeds": [0, 0]}
    import io

    buf = io.BytesIO()
    torch.save(good, buf)
    run = {"truncated": lambda: _run_folder(tmp_path, buf.getvalue()[: len(buf.getvalue()) // 2]),
           "random": lambda: _run_folder(tmp_path, bytes(range(256)) * 8),
           "missing_keys": lambda: _run_folder(tmp_path, obj={"images": good["images"]}),
           "not_a_dict": lambda: _run_folder(tmp_path, obj=[good["images"]]),
           "pickled_code": lambda: _run_folder(tmp_path, obj={**good, "extra": Payload()})}[kind]()
    line = one_line_error("evaluate", f"run_dir={run}")
    assert re.search(expected, line) and str(run / "prototypes.pt") in line, line
