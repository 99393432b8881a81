"""protoscope-evaluate: scoring against natural images, file outputs, input folders and the Hydra task."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg
from synthetic import CLASSES, PER_CLASS, SIZE, make_reference_folder, pattern, save
from protoscope.errors import ConfigError
from protoscope.evaluation import (
    choose_reference, evaluate_prototypes, forward_paths, load_image_folder, log_evaluation, run_evaluation,
    write_evaluation,
)
from protoscope.metrics import natural_percentile, path_similarity
from protoscope.metrics.image_stats import image_statistics
from protoscope.models import activation_path, load_model
from protoscope.models.class_names import FASHION_MNIST
from protoscope.paths import conf_dir
from protoscope.reference import ImageFolderSource, compute_reference_stats

MODEL_CFG = OmegaConf.load(conf_dir() / "model" / "tiny_cnn.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A reference folder (sub-folders named by index) and the tiny model."""
    root = make_reference_folder(tmp_path_factory.mktemp("ref"))
    return SimpleNamespace(root=root, classifier=load_model(MODEL_CFG))


@pytest.fixture
def reference(world):
    return compute_reference_stats(world.classifier, ImageFolderSource(world.root), CLASSES,
                                   max_per_class=PER_CLASS, batch_size=32, progress=False)


def noise(seed: int) -> torch.Tensor:
    return torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def make_run(run_dir: Path) -> Path:
    """A protoscope-generate-like run folder: 2 seeds of classes 0-2 (central image + small noise) and a hybrid."""
    images = [pattern(c) if s == 0 else (pattern(c) + 0.05 * (noise(s) - 0.5)).clamp(0, 1) for c in CLASSES
              for s in range(2)] + [pattern(0)]
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"images": torch.stack(images), "class_indices": [c for c in CLASSES for _ in range(2)] + [[0, 1]],
                "class_names": [f"class_{c}" for c in CLASSES for _ in range(2)] + ["class_0+class_1"],
                "seeds": [s for _ in CLASSES for s in range(2)] + [0]}, run_dir / "prototypes.pt")
    OmegaConf.save(OmegaConf.create({"model": MODEL_CFG}), run_dir / "config.yaml")
    return run_dir


def evaluate_cfg(tmp_path: Path, world, *overrides: str):
    return compose_cfg("evaluate", ["reference=image_folder", f"reference.root={world.root}",
                                    f"reference.max_per_class={PER_CLASS}", "progress=false", *overrides], tmp_path)


# ------------------------------------------------------------------------------------------- scoring


def test_central_natural_image_scores_high_and_noise_low(world, reference):
    images = torch.stack([pattern(0), pattern(1), noise(1), noise(2)])
    res = evaluate_prototypes(world.classifier, images, [0, 1, 0, 1], [0, 0, 1, 1], reference, batch_size=3)
    for m in ("spearman", "l1"):
        assert (res.percentile[m][:2] >= 80).all(), (m, res.percentile[m])
        assert (res.percentile[m][2:] <= 10).all(), (m, res.percentile[m])
    assert res.scores["spearman"].shape == (4, len(world.classifier.layer_names))
    assert (res.layer_mean("l1")[:2] < res.layer_mean("l1")[2:].min()).all()
    assert res.band(0, "spearman").shape == (3, len(world.classifier.layer_names))


def test_evaluation_runs_on_the_torchmetrics_class_and_gives_the_functional_core_bit_for_bit(world, reference):
    images = torch.stack([pattern(0), noise(1), pattern(2), noise(3), noise(4)])
    ids = [0, 0, 2, 2, 1]
    res = evaluate_prototypes(world.classifier, images, ids, [0, 1, 0, 1, 0], reference, measures=("spearman", "l1"))
    path, _ = forward_paths(world.classifier, images)
    for c in (0, 1, 2):
        rows = [i for i, k in enumerate(ids) if k == c]
        direct = natural_percentile(reference.image_paths(c), {n: path[n][rows] for n in path}, ("spearman", "l1"))
        for m in ("spearman", "l1"):
            torch.testing.assert_close(res.percentile[m][rows], direct.percentile[m].double(), atol=0, rtol=0)
            torch.testing.assert_close(res.scores[m][rows], direct.candidate_scores[m].double(), atol=0, rtol=0)
            torch.testing.assert_close(res.concat_percentile[m][rows], direct.concat_percentile[m].double(),
                                       atol=0, rtol=0)
            torch.testing.assert_close(res.natural_concat[c][m], direct.natural_concat[m].double(), atol=0, rtol=0)


def test_csv_json_and_summary_of_a_run_with_baseline(tmp_path, world):
    run_dir = make_run(tmp_path / "run")
    base = tmp_path / "lucent"
    for c in (0, 2):
        for s in (3, 4):
            save(base / f"class_{c}" / f"img_seed{s}.png", noise(10 * c + s))
    out = run_evaluation(evaluate_cfg(tmp_path, world, f"run_dir={run_dir}", f"baseline_images={base}",
                                      "baseline_label=lucent"))
    assert out.out_dir == run_dir / "evaluation"
    rows = list(csv.DictReader((out.out_dir / "path_similarity.csv").open()))
    protos = [r for r in rows if r["source"] == "prototype"]
    assert len(protos) == 6  # the hybrid is skipped
    # the same numbers straight from protoscope.metrics
    clf, layers = world.classifier, world.classifier.layer_names
    saved = torch.load(run_dir / "prototypes.pt", weights_only=True)
    ref = compute_reference_stats(clf, ImageFolderSource(world.root), CLASSES, max_per_class=PER_CLASS, progress=False)
    assert ref.from_cache
    path = activation_path(clf, saved["images"][:6])
    for i, row in enumerate(protos):
        c = int(row["class_index"])
        assert c == saved["class_indices"][i] and int(row["seed_index"]) == saved["seeds"][i]
        one = {l: path[l][i:i + 1] for l in layers}
        direct = natural_percentile(ref.image_paths(c), one, ("spearman", "l1"))
        sims = path_similarity(one, ref.mean_path(c), ("spearman", "l1"))
        for j, l in enumerate(layers):
            assert float(row[f"spearman/{l}"]) == pytest.approx(float(sims["spearman"][0, j]), abs=1e-5)
        assert float(row["l1/mean"]) == pytest.approx(float(sims["l1"][0].mean()), rel=1e-5)
        assert float(row["spearman/percentile"]) == pytest.approx(float(direct.percentile["spearman"][0]))
        assert float(row["l1/percentile"]) == pytest.approx(float(direct.percentile["l1"][0]))
        prob = torch.softmax(clf.network(saved["images"][i:i + 1]), -1)[0, c]
        assert float(row["target_prob"]) == pytest.approx(float(prob), rel=1e-4)
    lucent = [r for r in rows if r["source"] == "lucent"]
    assert sorted((r["class_index"], r["seed_index"]) for r in lucent) == [("0", "3"), ("0", "4"), ("2", "3"), ("2", "4")]
    summary = (out.out_dir / "summary.md").read_text()
    for c in CLASSES:
        assert f"| class_{c} | prototype | 2 |" in summary
        assert f"| class_{c} | natural | {PER_CLASS} |" in summary
    assert "| class_0 | lucent | 2 |" in summary and "| class_1 | lucent" not in summary
    assert "| **all classes** | lucent | 4 |" in summary
    data = json.loads((out.out_dir / "path_similarity.json").read_text())
    assert data["sources"] == ["prototype", "lucent"] and set(data["natural"]) == {f"class_{c}" for c in CLASSES}
    assert len(data["natural"]["class_1"]["spearman"]["median"]) == len(layers)
    for name in ["path_similarity_spearman.png", "path_similarity_l1.png", "percentiles.png", "config.yaml"]:
        assert (out.out_dir / name).stat().st_size > 1000 or name == "config.yaml"
    assert OmegaConf.load(out.out_dir / "config.yaml").reference.name == "image_folder"


def test_many_classes_plot_and_wandb_logging(tmp_path, world, reference):
    images = torch.stack([pattern(c) for c in CLASSES])
    res = evaluate_prototypes(world.classifier, images, list(CLASSES), [0, 0, 0], reference, measures=["spearman"])
    files = write_evaluation(res, tmp_path, max_panels=1)
    assert set(files) == {"csv", "json", "summary", "plot_spearman", "percentiles", "examples"}

    class WandbLogger:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return lambda *a, **kw: self.calls.append((name, kw))

    lg = WandbLogger()
    log_evaluation([lg], files, res)
    kinds = [name for name, _ in lg.calls]
    assert kinds.count("log_image") == 3 and kinds.count("log_table") == 1
    table = next(kw for name, kw in lg.calls if name == "log_table")
    assert len(table["data"]) == 3 and "spearman/percentile" in table["columns"]


def test_image_statistics_of_prototypes_and_natural_photos_reach_records_summary_and_figure(tmp_path, world, reference):
    source = ImageFolderSource(world.root)
    plan = source.plan(world.classifier, [1], PER_CLASS, 0, None)
    photos = torch.stack([source.load(item, world.classifier) for _, item in plan])
    expected = image_statistics(photos)
    for name, values in reference.image_stats[1].items():
        torch.testing.assert_close(values, expected[name].to(values.dtype))
    assert reference.examples[1].dtype == torch.uint8 and len(reference.examples[1]) == min(4, len(photos))
    torch.testing.assert_close(reference.examples[1][0].float() / 255, photos[0], atol=0.5 / 255, rtol=0)
    flat, saturated = torch.full((3, SIZE, SIZE), 0.5), torch.zeros(3, SIZE, SIZE)
    saturated[:, :, SIZE // 2:] = 1.0  # half black, half white: every value clipped
    res = evaluate_prototypes(world.classifier, torch.stack([flat, saturated]), [1, 1], [0, 1], reference)
    assert res.image_stats["clipped"].tolist() == [0.0, 1.0]
    assert res.records()[1]["image/clipped"] == 1.0 and res.records()[0]["image/spread"] == 0.0
    files = write_evaluation(res, tmp_path)
    summary = files["summary"].read_text()
    natural_row = next(l for l in summary.splitlines() if l.startswith("| class_1 | natural |") and "%" not in l
                       and l.count("[") == 4)
    median_clipped = float(torch.quantile(100 * expected["clipped"], 0.5))
    assert natural_row.split("|")[4].strip().startswith(f"{median_clipped:.3f}")
    assert "| class_1 | prototype | 2 | 50.000 ± 70.711 |" in summary
    assert files["examples"].stat().st_size > 0 and "(examples.png)" in summary


# ------------------------------------------------------------------------------------------- inputs


def test_folder_with_wrong_size_image_errors_with_the_fix(tmp_path, world):
    save(tmp_path / "imgs" / "0" / "ok.png", pattern(0))
    save(tmp_path / "imgs" / "1" / "big.png", torch.rand(3, 40, 48))
    with pytest.raises(ConfigError, match=r"big\.png is 48x40 with 3 channel.*32x32 with 3.*resize=true"):
        load_image_folder(tmp_path / "imgs", None, world.classifier)
    images = load_image_folder(tmp_path / "imgs", None, world.classifier, resize=True)
    assert images.images.shape == (2, 3, SIZE, SIZE) and images.class_ids == [0, 1]


def test_folder_class_matching_no_class_errors(tmp_path, world):
    save(tmp_path / "imgs" / "class_1" / "a.png", pattern(1))
    save(tmp_path / "imgs" / "giraffe" / "a.png", pattern(1))
    with pytest.raises(ConfigError, match="giraffe.*matches no class of model tiny_cnn"):
        load_image_folder(tmp_path / "imgs", None, world.classifier)
    (tmp_path / "map.csv").write_text("filename,class\ngiraffe/a.png,zebra\n")
    with pytest.raises(ConfigError, match="'zebra' matches no class"):
        load_image_folder(tmp_path / "imgs", tmp_path / "map.csv", world.classifier)


def test_mapping_files_and_seed_parsing(tmp_path, world):
    for name in ("p_seed7.png", "q.png", "r.png"):
        save(tmp_path / "flat" / name, pattern(2))
    (tmp_path / "map.csv").write_text("p_seed7.png,class_2\nq.png,2\nr.png,1\n")
    (tmp_path / "map.json").write_text(json.dumps({"p_seed7.png": "class_2", "q.png": 2, "r.png": "1"}))
    for mapping in ("map.csv", "map.json"):
        got = load_image_folder(tmp_path / "flat", tmp_path / mapping, world.classifier)
        assert got.class_ids == [2, 2, 1] and got.seeds == [7, 1, 0]
        assert got.files == ["p_seed7.png", "q.png", "r.png"]


def test_model_and_reference_choice(tmp_path, world):
    with pytest.raises(ConfigError, match="set model="):
        run_evaluation(evaluate_cfg(tmp_path, world, f"images={tmp_path}"))
    with pytest.raises(ConfigError, match="exactly one of"):
        run_evaluation(evaluate_cfg(tmp_path, world))
    fashion = SimpleNamespace(name="f", num_classes=10, class_names=list(FASHION_MNIST))
    imagenet = SimpleNamespace(name="i", num_classes=1000, class_names=["tench"] * 1000)
    none = compose_cfg("evaluate", [], tmp_path)
    assert choose_reference(none, fashion).name == "fashion_mnist"
    assert choose_reference(none, imagenet).name == "bundled_photos"
    with pytest.raises(ConfigError, match="reference=image_folder"):
        choose_reference(none, world.classifier)
    run = make_run(tmp_path / "run")
    other = OmegaConf.merge(MODEL_CFG, {"class_names": [f"c{i}" for i in range(10)]})
    OmegaConf.save(OmegaConf.create({"model": other}), run / "config.yaml")
    with pytest.raises(ConfigError, match="the run's class 0 is 'class_0'"):
        run_evaluation(evaluate_cfg(tmp_path, world, f"run_dir={run}"))


def test_evaluates_a_real_generate_run(tmp_path, world):
    from conftest import FAST
    from protoscope.generation.pipeline import run_generation

    gen = run_generation(compose_cfg("generate", [*FAST, "classes=[0,2]", "seeds_per_class=2"], tmp_path / "gen"))
    out = run_evaluation(evaluate_cfg(tmp_path / "ev", world, f"run_dir={gen.out_dir}", "measures=[spearman,l1]"))
    res = out.result
    assert res.class_ids == [0, 0, 2, 2] and res.seeds == [0, 1, 0, 1]
    assert [r["target_prob"] for r in gen.records] == pytest.approx(res.target_prob.tolist(), rel=1e-4)
    assert [r["target_rank"] for r in gen.records] == res.target_rank.tolist()
    assert (out.out_dir / "summary.md").read_text().count("| prototype |") == 8  # (2 classes + overall) x 2 path definitions + 2 image-statistics rows


def test_evaluate_cli_writes_into_the_run_and_leaves_no_empty_folder(tmp_path, world):
    import os
    import subprocess
    import sys

    from conftest import FAST
    from protoscope.generation.pipeline import run_generation

    gen = run_generation(compose_cfg("generate", [*FAST, "classes=[0,2]"], tmp_path / "gen"))
    proc = subprocess.run([sys.executable, "-m", "protoscope.evaluate", f"run_dir={gen.out_dir}",
                           "reference=image_folder", f"reference.root={world.root}", "measures=[spearman,l1]"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PROJECT_ROOT": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (gen.out_dir / "evaluation" / "path_similarity.csv").is_file()
    assert (gen.out_dir / "evaluation" / "evaluate.log").is_file()  # its log sits with its results
    assert not (tmp_path / "outputs").exists()


def test_both_path_definitions_and_the_logits_switch(world, reference):
    images = torch.stack([pattern(0), noise(1)])
    full = evaluate_prototypes(world.classifier, images, [0, 0], [0, 1], reference)
    assert full.layer_names[-1] == "logits"
    for m in ("spearman", "l1"):  # the central image beats the noise under both definitions
        assert full.concat_percentile[m][0] > full.concat_percentile[m][1]
        assert full.path_percentile(m, "concat") is full.concat_percentile[m]
    assert full.natural_concat[0]["spearman"].shape == (PER_CLASS,)
    inner = evaluate_prototypes(world.classifier, images, [0, 0], [0, 1], reference, include_logits=False)
    assert "logits" not in inner.layer_names and inner.scores["spearman"].shape == (2, len(full.layer_names) - 1)
    assert torch.allclose(inner.scores["spearman"], full.scores["spearman"][:, :-1])
    assert not torch.allclose(inner.concat["spearman"], full.concat["spearman"])
    rec = full.records()[0]
    assert {"spearman/concat", "spearman/concat_percentile", "l1/concat", "l1/concat_percentile"} <= set(rec)
