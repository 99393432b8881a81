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
    """Compose conf/train.yaml with caches, models and outputs under tmp_path (never the user's models)."""
    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PROTOSCOPE_MODELS", str(tmp_path / "models"))

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
    ckpt = result.files["stored"]
    assert ckpt == tmp_path / "models" / f"fashion_cnn-{result.metrics['model_hash']}.pt" and ckpt.is_file()

    # Clearly above chance (10 %) on held-out test images.
    assert result.metrics["test_accuracy"] > 0.5
    assert result.metrics["test_split"] == "test" and result.metrics["test_samples"] == 1000

    # The kept model is the bare network: the shipped model config (model=fashion_cnn: the latest model of
    # the models folder) loads it and gives the same logits.
    clf = load_model(model_cfg("fashion_cnn"))
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
    assert json.loads(ckpt.with_suffix(".json").read_text())["classes"] == clf.class_names

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


# --- the models folder: models are kept by recipe, never replaced; model=fashion_cnn selects one ------------
BD_MODEL = ["model.arch.num_classes=2", "model.class_names=[bright,dark]"]
TINY_GENERATE = ["model=fashion_cnn", *BD_MODEL, "classes=all", "param=pixel", "schedule.baseline_steps=2",
                 "schedule.prototype_steps=6", "logger=none", "trainer.enable_progress_bar=false",
                 "trainer.accelerator=cpu", "checkpoint_every=0"]


@pytest.fixture
def models_setup(tmp_path, monkeypatch):
    """A tiny bright/dark image folder, a models folder under tmp_path, and train/generate helpers."""
    from conftest import compose_cfg
    from protoscope.generation.pipeline import run_generation

    monkeypatch.setenv("PROTOSCOPE_MODELS", str(tmp_path / "models"))
    root = make_folder(tmp_path / "imgs", {"bright": (170, 256), "dark": (0, 90)}, n=6)

    def train_run(name: str, *overrides: str):
        cfg = compose_cfg("train", ["train_data=image_folder", f"train_data.root={root}", "train_data.val_fraction=0.34",
                                    "batch_size=4", "epochs=1", "logger=none", *FAST, *overrides], tmp_path / name)
        return train(cfg)

    def generate(name: str, *overrides: str):
        cfg = compose_cfg("generate", [*TINY_GENERATE, *overrides], tmp_path / name)
        result = run_generation(cfg)
        return result, json.loads((tmp_path / name / "run.json").read_text())

    return tmp_path / "models", train_run, generate


def test_models_folder_keeps_each_recipe_and_model_name_selects(models_setup, tmp_path):
    from protoscope.models.store import recipe_hash, stored_models

    models, train_run, generate = models_setup
    first = train_run("t1", "seed=0")
    path1 = first.files["stored"]
    hash1 = first.metrics["model_hash"]
    assert path1 == models / f"fashion_cnn-{hash1}.pt" and len(hash1) == 12
    side = json.loads(path1.with_suffix(".json").read_text())
    assert side["hash"] == hash1 == recipe_hash(side["recipe"]) and side["shortcut"] is None
    assert side["classes"] == ["bright", "dark"] and side["run_dir"] == str((tmp_path / "t1").resolve())
    assert side["recipe"]["seed"] == 0 and side["recipe"]["train_data"]["root"] == str((tmp_path / "imgs").resolve())
    assert side["test_accuracy"] == first.metrics["test_accuracy"] and side["created"]
    run_state, kept = (torch.load(p, weights_only=True) for p in (tmp_path / "t1" / "model.pt", path1))
    assert all(torch.equal(run_state[k], kept[k]) for k in run_state)
    kept_bytes = path1.read_bytes()

    _, record = generate("g0")  # the default: the latest clean model, the only one so far
    assert record["model"]["hash"] == hash1
    by_name, record = generate("g1", f"model.name='{hash1}'")
    assert record["model"] == {"name": hash1, "file": str(path1), "hash": hash1}
    assert record["recipe"]["model"]["checkpoint"] == str(path1)  # the run names the exact file

    second = train_run("t2", "seed=1")  # another recipe: another file; the first is untouched
    hash2 = second.metrics["model_hash"]
    assert hash2 != hash1 and second.files["stored"] == models / f"fashion_cnn-{hash2}.pt"
    assert path1.read_bytes() == kept_bytes
    again, _ = generate("g2", f"model.name=fashion_cnn-{hash1}")  # by file stem: the same prototypes
    assert torch.equal(again.images, by_name.images)

    done, record = generate("g0")  # the completed default run keeps its model: skipped, not refused
    assert done.skipped and record["model"]["hash"] == hash1
    _, latest = generate("g3")  # model.name=fashion_cnn: the latest clean model
    assert latest["model"]["hash"] == hash2 and latest["model"]["file"] == str(second.files["stored"])
    _, prefix = generate("g4", f"model.name='{hash1[:7]}'")
    assert prefix["model"]["hash"] == hash1

    # A shortcut model is kept under its own hash and never becomes the default.
    short = train_run("t3", "seed=0", "shortcut=square", "shortcut.target=dark", "shortcut.mark.height=3",
                      "shortcut.mark.width=3")
    hash3 = short.metrics["model_hash"]
    assert hash3 not in (hash1, hash2)
    assert json.loads(short.files["stored"].with_suffix(".json").read_text())["shortcut"]["target"] == "dark"
    _, latest = generate("g5")
    assert latest["model"]["hash"] == hash2
    _, named = generate("g6", f"model.name='{hash3}'")
    assert named["model"]["hash"] == hash3

    # The same recipe again rewrites the same name (and is then the latest); nothing else appears.
    repeat = train_run("t4", "seed=0")
    assert repeat.files["stored"] == path1
    assert sorted(m.hash for m in stored_models(models)) == sorted([hash1, hash2, hash3])
    _, latest = generate("g7")
    assert latest["model"]["hash"] == hash1


def test_a_run_folder_model_records_its_hash_and_explicit_checkpoints_still_load(models_setup, tmp_path):
    models, train_run, generate = models_setup
    first = train_run("t1", "paths.models_dir=null")  # opt out of the models folder
    assert "stored" not in first.files and not models.exists()
    _, record = generate("g1", f"model.checkpoint={tmp_path / 't1' / 'model.pt'}")
    assert record["model"]["hash"] == first.metrics["model_hash"]
    assert record["model"]["file"] == str(tmp_path / "t1" / "model.pt")


def test_model_selection_errors_are_one_line_listing_the_models(models_setup, tmp_path):
    from protoscope.errors import CheckpointError
    from protoscope.models.store import find_model

    models, train_run, _ = models_setup
    with pytest.raises(CheckpointError, match="no trained model in .*run protoscope-train first"):
        find_model(models, "fashion_cnn")
    short = train_run("t1", "shortcut=square", "shortcut.target=dark", "shortcut.mark.height=3",
                      "shortcut.mark.width=3")
    name = short.files["stored"].stem
    with pytest.raises(CheckpointError) as info:
        find_model(models, "fashion_cnn")  # only a shortcut model: the default refuses it, naming it
    message = str(info.value)
    assert "no fashion_cnn model trained without a shortcut" in message and name in message
    assert "shortcut square on dark" in message and "model.name=<hash or file stem>" in message
    assert "\n" not in message
    with pytest.raises(CheckpointError, match=f"no trained model named nope .*{name}"):
        find_model(models, "nope")
    assert find_model(models, name).path == short.files["stored"]


def test_generate_without_a_trained_model_fails_in_one_line(tmp_path):
    from test_errors import one_line_error

    line = one_line_error("generate", f"hydra.run.dir={tmp_path / 'run'}", "model=fashion_cnn", "classes=all",
                          f"paths.models_dir={tmp_path / 'models'}")
    assert "CheckpointError: no trained model in" in line and "run protoscope-train first" in line
    assert not (tmp_path / "run" / "run.json").exists()


def test_a_model_name_read_as_a_number_says_to_quote_it():
    from protoscope.models.store import select_model

    for name in (1.727e22, 123456):  # what Hydra makes of model.name=1727e19 and model.name=123456
        with pytest.raises(ConfigError, match=r"read as a number: quote"):
            select_model({"name": name})
