"""reference=imagenette: the val split of fast.ai's Imagenette (torchvision.datasets.Imagenette), its wnids mapped
to ImageNet-1k class indices, read from an existing copy in any of its layouts or downloaded on first use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from torchvision.datasets import Imagenette

from protoscope.errors import ReferenceDataError
from protoscope.models import load_model
from protoscope.models.class_names import imagenet, match_class
from protoscope.reference import (ImageFolderSource, ImagenetteSource, build_reference, compute_reference_stats,
                                  imagenet_wnids)
from protoscope.reference.imagenette import ROOT_ENV, WNIDS

CONF = Path(__file__).resolve().parents[1] / "conf"
SAMPLE = os.environ.get(ROOT_ENV)  # tests/conftest.py sets it to this machine's sample of the val split
needs_sample = pytest.mark.skipif(not SAMPLE, reason=f"no Imagenette copy: set ${ROOT_ENV}")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def clf():
    """A 32-px model with the 1000 ImageNet classes (cheap stand-in for an ImageNet classifier)."""
    cfg = OmegaConf.load(CONF / "model" / "tiny_cnn.yaml")
    for key, value in {"arch.num_classes": 1000, "num_classes": 1000, "class_names": "imagenet"}.items():
        OmegaConf.update(cfg, key, value)
    return load_model(cfg)


def photo(path: Path, seed: int, shape=(40, 48, 3)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path, "JPEG")


def torchvision_copy(root: Path, per_class: int = 2) -> Path:
    """``root/imagenette2-160/val/<wnid>/*.JPEG``: the layout torchvision's download leaves."""
    for k, w in enumerate(WNIDS):
        for i in range(per_class):
            photo(root / "imagenette2-160" / "val" / w / f"ILSVRC2012_val_{k:04d}{i:04d}.JPEG", seed=10 * k + i)
    return root


def test_wnids_map_to_the_models_imagenet_class_of_the_same_name(clf, tmp_path):
    root = torchvision_copy(tmp_path / "tv")
    ds = Imagenette(str(root), split="val", size="160px")  # torchvision reads the same copy
    source = ImagenetteSource(root=root)
    found = source.candidates(clf, None)
    assert sorted(source.wnid_folders()) == sorted(ds.wnids) == sorted(WNIDS)
    for w in ds.wnids:
        c = imagenet_wnids().index(w)
        assert len(found[c]) == 2
        # torchvision's own name for the wnid is the model's name of that class index
        assert match_class(ds.classes[ds.wnid_to_idx[w]][0], clf.class_names, allow_index=False) == c
    assert sorted(found) == [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
    assert [imagenet()[c] for c in (0, 566, 701)] == ["tench", "French horn", "parachute"]


def test_every_accepted_layout_gives_the_same_photos(clf, tmp_path):
    plan = ImagenetteSource(root=torchvision_copy(tmp_path / "tv")).plan(clf)
    val = tmp_path / "tv" / "imagenette2-160" / "val"
    # the extracted archive, its val folder, and class folders named in classes.csv
    by_name = tmp_path / "named"
    rows = ["wnid,class_index,class_name,images"]
    for w in WNIDS:
        c = imagenet_wnids().index(w)
        (by_name / imagenet()[c]).mkdir(parents=True)
        for f in sorted((val / w).iterdir()):
            (by_name / imagenet()[c] / f.name).write_bytes(f.read_bytes())
        rows.append(f"{w},{c},{imagenet()[c]},2")
    (by_name / "classes.csv").write_text("\n".join(rows) + "\n")
    for root in (val.parent, val, by_name):
        other = ImagenetteSource(root=root).plan(clf)
        assert [(c, Path(p).name) for c, p in other] == [(c, Path(p).name) for c, p in plan]
    with pytest.raises(ReferenceDataError, match=r"holds no Imagenette val photos: point reference\.root="):
        ImagenetteSource(root=tmp_path / "empty").plan(clf)


@needs_sample
def test_the_sample_loads_like_an_image_folder_with_the_same_photos_and_max_per_class(clf, tmp_path):
    imagenette, folder = ImagenetteSource(), ImageFolderSource(SAMPLE)  # root from the environment
    for limit in (50, 7):
        plan = imagenette.plan(clf, max_per_class=limit)
        assert plan == folder.plan(clf, max_per_class=limit)  # the same seeded subset of the same files
        assert len(plan) == 10 * limit and {c for c, _ in plan} == {0, 217, 482, 491, 497, 566, 569, 571, 574, 701}
    base = {"batch_size": 32, "seed": 0, "cache_root": str(tmp_path / "cache"), "max_per_class": 3}
    nette = build_reference({**base, "name": "imagenette", "_target_": "protoscope.reference.ImagenetteSource"},
                            clf, [0, 701])
    plain = build_reference({**base, "name": "image_folder", "_target_": "protoscope.reference.ImageFolderSource",
                             "root": SAMPLE}, clf, [0, 701])
    assert nette.counts == plain.counts == {0: 3, 701: 3}
    for c in (0, 701):
        for layer, value in nette.mean_path(c).items():
            assert value.equal(plain.mean_path(c)[layer])  # identical statistics ...
    assert nette.key != plain.key  # ... under another cache key (the source's name and options differ)
    again = compute_reference_stats(clf, ImagenetteSource(root=SAMPLE), [0], max_per_class=3, batch_size=32,
                                    cache_root=tmp_path / "cache", progress=False)
    assert again.from_cache and again.key != compute_reference_stats(
        clf, ImagenetteSource(root=SAMPLE), [0], max_per_class=4, batch_size=32,
        cache_root=tmp_path / "cache", progress=False).key


def test_no_copy_and_no_download_fails_in_one_line_naming_root_variable_and_download(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != ROOT_ENV}
    # any download fails at once (a proxy nobody listens on), even on a machine with internet
    env.update(PROTOSCOPE_DATA=str(tmp_path / "data"), https_proxy="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", WANDB_MODE="offline")
    photo(tmp_path / "imgs" / "tench" / "a.jpg", seed=1, shape=(32, 32, 3))  # the model's input size
    proc = subprocess.run(
        [sys.executable, "-m", "protoscope.evaluate", f"images={tmp_path / 'imgs'}", "model=tiny_cnn",
         "model.arch.num_classes=1000", "model.num_classes=1000", "model.class_names=imagenet",
         "reference=imagenette", f"out_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = lines[0]
    assert line.startswith("protoscope: ReferenceDataError: imagenette: could not download https://")
    assert "reference.root=" in line and ROOT_ENV in line and str(tmp_path / "data" / "imagenette") in line
    monkeypatch.delenv(ROOT_ENV, raising=False)
    with pytest.raises(ReferenceDataError, match=r"reference\.download=false: point reference\.root=.*"
                                                 rf"\${ROOT_ENV}.*reference\.download=true to fetch https://"):
        ImagenetteSource(data_dir=tmp_path / "data2", download=False).wnid_folders()
