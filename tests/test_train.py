"""protoscope-train: Fashion-MNIST and image-folder training, checkpoint round trip, clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from protoscope.data.fashion_mnist import DEFAULT_ROOT
from protoscope.errors import ConfigError, ReferenceDataError
from protoscope.models import load_model
from protoscope.paths import conf_dir
from protoscope.training import train
from protoscope.training.task import augment

FAST = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]



@pytest.fixture
def compose_train(tmp_path, monkeypatch):
    """Compose conf/train.yaml with caches and outputs under tmp_path (never the user's checkpoint)."""
    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PROTOSCOPE_FASHION_CKPT", raising=False)

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose("train", overrides=[f"paths.output_dir={tmp_path / 'run'}", *FAST, *overrides])

    return _compose


def model_cfg(name: str, **overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(f"model/{name}")
    cfg = cfg.model
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


@pytest.mark.skipif(not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").is_file(), reason="needs dataset-fashion-mnist")
def test_fashion_mnist_short_run_learns_and_checkpoint_round_trips(compose_train, tmp_path):
    cfg = compose_train("epochs=2", "train_data.limit_train_samples=3000", "train_data.limit_eval_samples=1000")
    result = train(cfg)
    ckpt = Path(cfg.save_to)
    assert ckpt == tmp_path / "cache" / "fashion_cnn.pt" and ckpt.is_file()

    # Clearly above chance (10 %) on held-out test images.
    assert result.metrics["test_accuracy"] > 0.5
    assert result.metrics["test_split"] == "test" and result.metrics["test_samples"] == 1000

    # The checkpoint is the bare network: load_model with the shipped model config gives the same logits.
    clf = load_model(model_cfg("fashion_cnn", checkpoint=str(ckpt)))
    images, labels = result.data.splits["test"]
    task = result.task.eval()
    with torch.no_grad():
        loaded_logits = clf.network(images.float() / 255)
        torch.testing.assert_close(loaded_logits, task(images), atol=1e-5, rtol=1e-5)
    run_state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    ckpt_state = torch.load(ckpt, weights_only=True)
    assert not any(k.startswith(("net.", "model.")) for k in ckpt_state)
    assert all(torch.equal(run_state[k], ckpt_state[k]) for k in ckpt_state)

    # metrics.json agrees with accuracy recomputed from the loaded checkpoint.
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    pred = loaded_logits.argmax(1)
    assert metrics["test_accuracy"] == pytest.approx((pred == labels).float().mean().item(), abs=1e-6)
    for k, name in enumerate(clf.class_names):
        mask = labels == k
        assert metrics["per_class_accuracy"][name] == pytest.approx((pred[mask] == k).float().mean().item(), abs=1e-6)
    assert metrics["epochs"] == 2 and metrics["seconds"] > 0
    assert json.loads((tmp_path / "cache" / "fashion_cnn.classes.json").read_text()) == clf.class_names

    # The CSV logger recorded train and validation loss and accuracy.
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    columns = set(rows[0])
    assert {"train/loss_step", "train/loss_epoch", "train/acc", "val/loss", "val/acc", "test/acc"} <= columns
    val_acc = [float(r["val/acc"]) for r in rows if r["val/acc"]]
    assert len(val_acc) == 2 and val_acc[-1] > 0.5


def make_folder(root: Path, classes: dict[str, tuple[int, int]], n: int = 12, seed: int = 0) -> Path:
    """Class folders of noisy RGB images with brightness in the given range, of varied sizes."""
    rng = np.random.default_rng(seed)
    for name, (lo, hi) in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            h, w = 30 + 4 * (i % 3), 36 - 2 * (i % 4)
            arr = rng.integers(lo, hi, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_image_folder_learns_bright_vs_dark(compose_train, tmp_path):
    root = make_folder(tmp_path / "imgs", {"bright": (170, 256), "dark": (0, 90)})
    ckpt = tmp_path / "bd.pt"
    cfg = compose_train(
        "train_data=image_folder", f"train_data.root={root}", "train_data.val_fraction=0.25",
        f"save_to={ckpt}", "batch_size=6", "epochs=8", "logger=none",
    )
    result = train(cfg)
    assert result.metrics["classes"] == ["bright", "dark"]
    assert result.metrics["test_split"] == "val" and result.metrics["test_samples"] == 6
    assert result.metrics["test_accuracy"] == 1.0
    classes = json.loads((tmp_path / "run" / "classes.json").read_text())
    assert classes == ["bright", "dark"] == json.loads((tmp_path / "bd.classes.json").read_text())

    # Reload as users would: model.arch.num_classes and class_names from classes.json.
    clf = load_model(model_cfg("fashion_cnn", checkpoint=str(ckpt), **{"arch.num_classes": 2}, class_names=classes))
    fresh = torch.cat([torch.full((1, 1, 28, 28), 0.9), torch.full((1, 1, 28, 28), 0.1)]) + 0.05 * torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        pred = clf.network(fresh).argmax(1).tolist()
    assert [clf.class_names[p] for p in pred] == ["bright", "dark"]


def test_bad_image_folders_raise_clear_errors(compose_train, tmp_path):
    def run_on(root) -> None:
        train(compose_train("train_data=image_folder", f"train_data.root={root}", "logger=none"))

    with pytest.raises(ConfigError, match="train_data.root is not set"):
        train(compose_train("train_data=image_folder", "logger=none"))
    with pytest.raises(ReferenceDataError, match="does not exist"):
        run_on(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReferenceDataError, match="no class sub-folders"):
        run_on(tmp_path / "empty")
    root = make_folder(tmp_path / "holes", {"a": (0, 50), "b": (200, 256)}, n=3)
    (root / "c").mkdir()
    (root / "c" / "notes.txt").write_text("not an image")
    with pytest.raises(ReferenceDataError, match=r"class folder .*c holds no images"):
        run_on(root)
    (root / "c" / "notes.txt").unlink()
    (root / "c" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ReferenceDataError, match="cannot read image .*broken.png"):
        run_on(root)


def test_entry_point_reports_errors_with_exit_status_2(compose_train, tmp_path, capsys):
    from protoscope.train import run

    with pytest.raises(SystemExit) as exit_info:
        run(compose_train("train_data=image_folder", f"train_data.root={tmp_path / 'nope'}", "logger=none"))
    assert exit_info.value.code == 2
    assert "ReferenceDataError" in capsys.readouterr().err


def test_augment_flips_and_shifts_by_whole_pixels():
    torch.manual_seed(0)
    images = torch.zeros(64, 1, 9, 9)
    images[:, :, 4, 2] = 1.0
    flipped = augment(images, hflip=True)
    cols = flipped[:, 0, 4].argmax(1)
    assert set(cols.tolist()) == {2, 6}  # mirrored about the centre column, or left alone
    shifted = augment(images, max_shift=2)
    assert torch.equal(shifted.flatten(1).sum(1), torch.ones(64))  # one pixel moved, nothing blurred
    pos = shifted[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 9, pos % 9
    assert (rows - 4).abs().max() <= 2 and (cols - 2).abs().max() <= 2
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10
