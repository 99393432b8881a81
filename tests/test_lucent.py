"""protoscope-lucent: the real Lucent library rendering a tiny model into a run folder that
protoscope-evaluate reads. Needs the optional extra `lucent` (CI installs it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import FAST, compose_cfg

pytest.importorskip("lucent.optvis.render", reason="optional extra not installed: pip install -e '.[lucent]'")

from lucent.optvis import transform as lucent_transform  # noqa: E402

from protoscope.baselines.lucent import run_lucent  # noqa: E402
from protoscope.evaluation import run_evaluation  # noqa: E402
from protoscope.models import load_model  # noqa: E402
from protoscope.generation.pipeline import run_generation  # noqa: E402

LUCENT = ["model=tiny_cnn", "classes=[0,1]", "steps=40"]


def test_lucent_run_folder_is_evaluated_as_a_baseline(tmp_path):
    n_transforms = len(lucent_transform.standard_transforms)
    torch.manual_seed(123)
    np.random.seed(123)
    expected_torch, expected_np = torch.rand(1), np.random.rand()
    torch.manual_seed(123)
    np.random.seed(123)

    out_dir, images, rows, records = run_lucent(compose_cfg("lucent", LUCENT, tmp_path / "lucent"))

    # Lucent's shared transform list is not mutated; the caller's global generators are untouched
    assert len(lucent_transform.standard_transforms) == n_transforms
    assert torch.rand(1).item() == expected_torch.item() and np.random.rand() == expected_np
    # each row rendered its own class: class c's logit is higher in c's image than in the other's
    logits = torch.tensor([[r["target_logit"] for r in records]])
    saved = torch.load(out_dir / "prototypes.pt", weights_only=True)
    assert saved["class_indices"] == [0, 1] and saved["images"].shape == (2, 3, 32, 32)
    cfg = OmegaConf.load(out_dir / "config.yaml")
    clf = load_model(cfg.model)  # the run's config.yaml rebuilds the model
    with torch.no_grad():
        out = clf.network(saved["images"])
    assert out[0, 0] > out[1, 0] and out[1, 1] > out[0, 1], out
    assert torch.allclose(out[[0, 1], [0, 1]].double(), logits[0].double(), atol=1e-4)
    # reproducible per row: the same seed renders the same images
    again = run_lucent(compose_cfg("lucent", LUCENT + ["classes=[1]"], tmp_path / "again"))[1]
    assert torch.allclose(again[0], images[1], atol=1e-6)

    # protoscope-evaluate reads it as the baseline of a protoscope-generate run
    from test_evaluate import pattern, save

    ref = tmp_path / "ref"
    for c in (0, 1):
        for k in range(4):
            save(ref / str(c) / f"{k}.png", pattern(c, 1 + 0.1 * k))
    gen = run_generation(compose_cfg("generate", [*FAST, "classes=[0,1]"], tmp_path / "gen"))
    ev = run_evaluation(compose_cfg("evaluate", [f"run_dir={gen.out_dir}", f"baseline_run={out_dir}",
                                                 "baseline_label=lucent", "reference=image_folder",
                                                 f"reference.root={ref}", "progress=false"], tmp_path / "ev"))
    assert ev.baseline is not None and ev.baseline.label == "lucent" and ev.baseline.class_ids == [0, 1]
    assert "| lucent |" in (ev.out_dir / "summary.md").read_text()
