"""Reference sources, preprocessing and the cached per-class activation statistics."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from protoscope.data.fashion_mnist import DEFAULT_ROOT
from protoscope.errors import ConfigError, ReferenceDataError
from protoscope.models import activation_path, load_model
from protoscope.models.class_names import imagenet
from protoscope.reference import (
    BundledPhotosSource, FashionMNISTSource, ImageFolderSource, ImageNetValSource, Split, build_reference,
    compute_reference_stats, imagenet_wnids, prepare,
)

CONF = Path(__file__).resolve().parents[1] / "conf"


def tiny(**overrides):
    cfg = OmegaConf.load(CONF / "model" / "tiny_cnn.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return load_model(cfg)


def write_image(path: Path, size=(40, 56), mode="RGB", seed=0) -> None:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def make_folder(root: Path, spec: dict[str, int]) -> Path:
    """root/<folder>/<i>.png|jpg with mixed sizes and modes."""
    for k, (folder, n) in enumerate(spec.items()):
        for i in range(n):
            ext = ".png" if i % 2 else ".jpg"
            write_image(root / folder / f"{i}{ext}", size=(30 + 7 * i, 50 - 3 * i),
                        mode="L" if i % 3 == 2 else "RGB", seed=100 * k + i)
    return root


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class ForwardCounter:
    def __init__(self, clf):
        self.calls = 0
        clf.network.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))


def stats_for(clf, root, classes=None, **kw):
    kw = {"max_per_class": 10, "batch_size": 4, "progress": False, **kw}
    return compute_reference_stats(clf, ImageFolderSource(root), classes, **kw)


# ---------------------------------------------------------------- preprocessing


def test_prepare_resizes_shorter_side_crops_centre_and_converts_channels():
    rgb = torch.zeros(3, 40, 80, dtype=torch.uint8)
    rgb[0, :, 30:50] = 255  # a red stripe in the centre, left/right thirds black
    out = prepare(rgb, 20, 3)
    assert out.shape == (3, 20, 20) and out.dtype == torch.float32
    assert out[0, :, 8:12].min() > 0.95 and out[0, :, :3].max() < 0.05  # centre kept, sides cropped
    grey = prepare(rgb, 20, 1)
    assert grey.shape == (1, 20, 20)
    assert torch.allclose(grey[0, 10, 10], torch.tensor(0.2989), atol=1e-3)  # luminance of pure red
    back = prepare(torch.full((1, 28, 28), 128, dtype=torch.uint8), 32, 3)
    assert back.shape == (3, 32, 32) and torch.allclose(back, torch.full_like(back, 128 / 255))


# ---------------------------------------------------------------- statistics


def test_mean_path_equals_mean_of_direct_activation_paths(tmp_path):
    clf = tiny()
    root = make_folder(tmp_path / "imgs", {"class_0": 5, "CLASS-3": 3, "7": 2})  # name, normalised name, index
    source = ImageFolderSource(root)
    stats = stats_for(clf, root, max_per_class=4)
    assert stats.classes == [0, 3, 7] and stats.counts == {0: 4, 3: 3, 7: 2}
    assert stats.layer_names == clf.layer_names and not stats.from_cache
    images: dict[int, list[torch.Tensor]] = {}
    for c, img in source.samples(clf, max_per_class=4):
        assert img.shape == (3, 32, 32) and 0 <= img.min() and img.max() <= 1
        images.setdefault(c, []).append(img)
    for c, imgs in images.items():
        direct = activation_path(clf, torch.stack(imgs))
        for layer in clf.layer_names:
            assert stats.image_paths(c)[layer].shape == direct[layer].shape
            torch.testing.assert_close(stats.image_paths(c)[layer], direct[layer], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(stats.mean_path(c)[layer], direct[layer].mean(0), atol=1e-5, rtol=1e-4)
    stacked = stats.stacked_means([7, 0])
    torch.testing.assert_close(stacked["logits"][1], stats.mean_path(0)["logits"])
    with pytest.raises(ReferenceDataError, match="class 5"):
        stats.mean_path(5)


def test_cache_hit_then_misses_on_weights_layers_and_data(tmp_path, cache, caplog):
    root = make_folder(tmp_path / "imgs", {"class_1": 3, "class_2": 3})
    clf = tiny()
    counter = ForwardCounter(clf)
    first = stats_for(clf, root)
    computed = counter.calls
    assert computed == 2 and not first.from_cache  # 6 images, batch 4
    files = sorted((cache / "reference" / first.key).glob("*.pt"))
    assert [f.name for f in files] == ["1.pt", "2.pt"]  # one entry per class
    with caplog.at_level(logging.INFO, logger="protoscope.reference"):
        second = stats_for(clf, root)
    assert second.from_cache and counter.calls == computed  # no forward pass at all
    assert "cache hit" in caplog.text
    for layer in clf.layer_names:
        assert torch.equal(second.image_paths(2)[layer], first.image_paths(2)[layer])

    other_weights = tiny(**{"arch.init_seed": 1})
    other_layers = tiny(layers=["stage2", "logits"])
    keys = {first.key}
    for model in (other_weights, other_layers):
        n = ForwardCounter(model)
        stats = stats_for(model, root)
        assert not stats.from_cache and n.calls == 2 and stats.key not in keys
        keys.add(stats.key)
    assert not torch.allclose(stats_for(other_weights, root).mean_path(1)["logits"], first.mean_path(1)["logits"])
    assert stats_for(other_layers, root).layer_names == ["stage2", "logits"]

    write_image(root / "class_1" / "extra.png", seed=99)  # data changed
    third = stats_for(clf, root)
    assert not third.from_cache and third.key not in keys and third.counts == {1: 4, 2: 3}
    assert counter.calls > computed
    # max_per_class and seed are part of the key too; the class list is not (entries are per class)
    assert stats_for(clf, root, classes=[1]).key == third.key
    assert stats_for(clf, root, max_per_class=2).key != third.key
    assert stats_for(clf, root, seed=1).key != third.key


def test_corrupt_cache_file_is_reported_and_recomputed(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs", {"class_0": 2})
    clf = tiny()
    first = stats_for(clf, root)
    path = Path(tmp_path / "cache" / "reference" / first.key / "0.pt")
    path.write_bytes(b"not a torch file")
    counter = ForwardCounter(clf)
    with caplog.at_level(logging.WARNING, logger="protoscope.reference"):
        again = stats_for(clf, root)
    assert not again.from_cache and counter.calls == 1
    assert "unreadable" in caplog.text and str(path) in caplog.text
    torch.testing.assert_close(again.mean_path(0)["logits"], first.mean_path(0)["logits"])
    assert stats_for(clf, root).from_cache  # rewritten


def test_a_subset_of_classes_reuses_the_per_class_cache_and_a_superset_computes_only_new_classes(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs", {"class_0": 3, "class_1": 2, "class_2": 4})
    clf = tiny()
    counter = ForwardCounter(clf)
    first = stats_for(clf, root, classes=[0, 1], batch_size=16)
    assert counter.calls == 1 and not first.from_cache
    subset = stats_for(clf, root, classes=[1], batch_size=16)  # a job of a class-split sweep
    assert subset.from_cache and counter.calls == 1 and subset.classes == [1] and subset.counts == {1: 2}
    assert torch.equal(subset.image_paths(1)["logits"], first.image_paths(1)["logits"])
    with caplog.at_level(logging.INFO, logger="protoscope.reference"):
        more = stats_for(clf, root, classes=[0, 1, 2], batch_size=16)
    assert not more.from_cache and counter.calls == 2 and "2 of 3 classes from the cache" in caplog.text
    direct = activation_path(clf, torch.stack([img for c, img in ImageFolderSource(root).samples(clf, [2])]))
    torch.testing.assert_close(more.mean_path(2)["logits"], direct["logits"].mean(0), atol=1e-5, rtol=1e-4)
    calls = counter.calls
    assert stats_for(clf, root, batch_size=16).from_cache and counter.calls == calls  # classes=None: all cached


# ---------------------------------------------------------------- bad inputs


def test_folder_matching_no_class_names_folder_and_close_classes(tmp_path):
    root = make_folder(tmp_path / "imgs", {"class_0": 1, "klass_4": 1})
    with pytest.raises(ConfigError) as err:
        stats_for(tiny(), root)
    msg = str(err.value)
    assert "klass_4" in msg and "class_4" in msg and "Rename" in msg
    with pytest.raises(ConfigError, match="out of range"):
        stats_for(tiny(), make_folder(tmp_path / "big", {"12": 1}))


def test_empty_requested_class_names_class_and_fix(tmp_path):
    root = make_folder(tmp_path / "imgs", {"class_0": 2, "class_5": 0})
    (root / "class_5").mkdir(exist_ok=True)
    (root / "class_5" / "notes.txt").write_text("not an image")
    with pytest.raises(ReferenceDataError) as err:
        stats_for(tiny(), root, classes=[0, 5])
    assert "class 5" in str(err.value) and "'class_5'" in str(err.value) and "put images in" in str(err.value)
    with pytest.raises(ReferenceDataError, match="class 3"):
        stats_for(tiny(), root, classes=[3])  # no folder at all
    with pytest.raises(ConfigError, match="out of range"):
        stats_for(tiny(), root, classes=[10])


def test_missing_fashion_mnist_gives_install_fix(tmp_path, monkeypatch):
    empty = tmp_path / "nothing"
    empty.mkdir()
    monkeypatch.setenv("FASHION_MNIST_DIR", str(empty))
    with pytest.raises(ReferenceDataError, match="apt-get install dataset-fashion-mnist"):
        build_reference(OmegaConf.load(CONF / "reference" / "fashion_mnist.yaml"), tiny(), [0])


def test_reference_config_entry_points(tmp_path):
    assert build_reference(None, tiny(), [0]) is None
    assert build_reference("none", tiny(), [0]) is None
    cfg = OmegaConf.load(CONF / "reference" / "image_folder.yaml")
    with pytest.raises(ConfigError, match="reference.root="):
        build_reference(cfg, tiny(), [0])
    cfg.root = str(make_folder(tmp_path / "imgs", {"class_0": 3, "class_1": 1}))
    cfg.max_per_class = 2
    stats = build_reference(cfg, tiny(), [0, 1])
    assert stats.counts == {0: 2, 1: 1}


# ---------------------------------------------------------------- sources


@pytest.mark.skipif(not (DEFAULT_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_maps_labels_and_converts_to_model_input(monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    from protoscope.data.fashion_mnist import load_fashion_mnist

    raw, labels = load_fashion_mnist("test")
    grey = tiny(**{"arch.in_channels": 1, "channels": 1, "mean": [0.5], "std": [0.25], "input_size": 28,
                   "class_names": "fashion_mnist"})
    source = FashionMNISTSource()
    plan = source.plan(grey, [9, 7], max_per_class=3)
    assert [c for c, _ in plan] == [7, 7, 7, 9, 9, 9]
    assert all(int(labels[i]) == c for c, i in plan)  # names map 1:1 to indices
    c, i = plan[0]
    torch.testing.assert_close(source.load(i, grey), raw[i].float() / 255)
    stats = compute_reference_stats(tiny(), source, [1], max_per_class=3, progress=False)  # RGB 32px model
    assert stats.counts == {1: 3} and stats.image_paths(1)["stage1"].shape == (3, 8)


def test_bundled_photos_give_imagenet_class_indices():
    clf = tiny(**{"arch.num_classes": 1000, "num_classes": 1000, "class_names": "imagenet"})
    names = imagenet()
    source = BundledPhotosSource(crops_per_photo=2)
    stats = compute_reference_stats(clf, source, None, max_per_class=2, batch_size=16, progress=False)
    expected = {names.index(n) for n in ("Egyptian cat", "espresso", "missile", "moped", "palace",
                                         "daisy", "military uniform")}
    assert set(stats.classes) == expected == {285, 967, 657, 665, 698, 985, 652}
    assert all(n == 2 for n in stats.counts.values())
    crops = [x for _, x in source.samples(clf, [285], seed=0)]  # centre view, then a random crop
    assert len(crops) == 2 and crops[0].shape == (3, 32, 32) and not torch.equal(crops[0], crops[1])
    again = [x for _, x in source.samples(clf, [285], seed=0)]
    other = [x for _, x in source.samples(clf, [285], seed=1)]
    assert torch.equal(again[1], crops[1]) and not torch.equal(other[1], crops[1])
    assert torch.equal(other[0], crops[0])
    with pytest.raises(ReferenceDataError, match="goldfish"):
        compute_reference_stats(clf, source, [names.index("goldfish")], progress=False)
    relabelled = BundledPhotosSource(crops_per_photo=1, photos=["coffee"], labels={"coffee": "class_3"})
    assert [c for c, _ in relabelled.plan(tiny())] == [3]
    with pytest.raises(ConfigError, match="astronaut"):
        BundledPhotosSource(photos=["astronaut"])


def test_imagenet_val_takes_any_subset_of_synsets_with_ilsvrc_indices(tmp_path):
    wnids = imagenet_wnids()
    names = imagenet()
    # the shipped list against torchvision's class names (known positions) and the shared sample's classes.csv
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids)
    assert (wnids[0], names[0]) == ("n01440764", "tench")
    assert names[wnids.index("n02669723")] == "academic gown" and names[wnids.index("n03787032")] == "mortarboard"
    sample = Path(os.environ.get("PROTOSCOPE_IMAGENETTE_ROOT", "/nonexistent")) / "classes.csv"
    if sample.is_file():  # this machine's ImageNet sample (tests/conftest.py sets the variable when it has one)
        for row in csv.DictReader(sample.open()):
            assert wnids.index(row["wnid"]) == int(row["class_index"]) and names[int(row["class_index"])] == row["class_name"]
    root = tmp_path / "val"
    for w in ("n03787032", "n01440764", "n02669723"):  # creation order must not matter
        (root / w).mkdir(parents=True)
    write_image(root / "n01440764" / "ILSVRC2012_val_00000001.JPEG", seed=1)
    write_image(root / "n02669723" / "ILSVRC2012_val_00000002.JPEG", seed=2)
    write_image(root / "n02669723" / "ILSVRC2012_val_00000003.JPEG", seed=3)
    clf = tiny(**{"arch.num_classes": 1000, "num_classes": 1000, "class_names": "imagenet"})
    source = ImageNetValSource(root)
    assert [c for c, _ in source.plan(clf)] == [0, 400, 400]
    stats = compute_reference_stats(clf, source, [400], progress=False)
    assert stats.classes == [400] and stats.counts == {400: 2}
    with pytest.raises(ReferenceDataError, match="n03787032"):
        compute_reference_stats(clf, source, [667], progress=False)  # an empty synset folder
    with pytest.raises(ReferenceDataError, match="no reference images of class 5"):
        compute_reference_stats(clf, source, [5], progress=False)  # a synset not in the folder
    with pytest.raises(ConfigError, match="has 10 classes"):
        source.plan(tiny())
    (root / "n99999999").mkdir()
    with pytest.raises(ReferenceDataError, match="not ILSVRC-2012 synsets"):
        source.plan(clf)


def test_reference_split_is_seeded_disjoint_and_complete(tmp_path):
    root = tmp_path / "ref"
    for c in (0, 1):
        for k in range(9):
            write_image(root / str(c) / f"{k}.png", seed=10 * c + k)
    clf = tiny()
    source = ImageFolderSource(root)
    val = source.plan(clf, split=Split("val", 0.5, seed=3))
    test = source.plan(clf, split=Split("test", 0.5, seed=3))
    assert source.plan(clf, split=Split("val", 0.5, seed=3)) == val  # seeded: the same parts again
    assert not set(val) & set(test) and sorted(val + test) == sorted(source.plan(clf))
    assert [c for c, _ in val].count(0) == 4 and [c for c, _ in test].count(0) == 5  # round(0.5 * 9) = 4
    assert source.plan(clf, split=Split("val", 0.5, seed=4)) != val  # another seed, another split
    base = {"name": "image_folder", "_target_": "protoscope.reference.ImageFolderSource", "root": str(root),
            "max_per_class": 50, "batch_size": 8, "seed": 0, "cache_root": str(tmp_path / "cache")}
    s_val = build_reference({**base, "part": "val", "part_seed": 3}, clf, [0, 1])
    s_test = build_reference({**base, "part": "test", "part_seed": 3}, clf, [0, 1])
    assert s_val.counts == {0: 4, 1: 4} and s_test.counts == {0: 5, 1: 5} and s_val.key != s_test.key
    with pytest.raises(ConfigError, match="part must be one of"):
        build_reference({**base, "part": "train"}, clf, [0, 1])

def test_a_reference_source_that_cannot_be_built_is_a_config_error_naming_it():
    from protoscope.reference.build import build_source

    with pytest.raises(ConfigError, match=r"cannot build protoscope\.reference\.NoSuchSource"):
        build_source({"name": "mine", "_target_": "protoscope.reference.NoSuchSource"})
