"""experiments/shortcuts/run.py: its table rows and ROC AUCs follow from the comparisons it reads."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

RUN_PY = Path(__file__).resolve().parents[1] / "experiments" / "shortcuts" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("shortcut_benchmark_run", RUN_PY)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def fake_comparison(planted: int, differences: list[float], corr_short: list[float], corr_clean: list[float]) -> dict:
    order = sorted(range(len(differences)), key=lambda c: -differences[c])
    ranking = [{"rank": r + 1, "class_index": c, "class_name": f"c{c}", "difference": differences[c],
                "pixel": differences[c], "cross": 0.0, "path": 0.0} for r, c in enumerate(order)]
    detection = []
    for model, corr in (("shortcut", corr_short), ("clean", corr_clean)):
        rank = {c: r + 1 for r, c in enumerate(sorted(range(len(corr)), key=lambda c: -corr[c]))}
        detection += [{"model": model, "class_index": c, "mark_corr": v, "mark_corr_rank": rank[c],
                       "paste_logprob_change": 0.1 * v} for c, v in enumerate(corr)]
    return {"ranking": ranking, "detection": detection}


def test_rows_and_summary_follow_the_comparisons(bench, monkeypatch):
    monkeypatch.setattr(bench, "planted_class", lambda seed: seed)  # seed s plants class s (3 classes)
    acc = {"test_accuracy": 0.9, "target_accuracy_unmarked": 0.8, "flip_rate": 0.01}
    short = {"shortcut": {"class": "c", "test_accuracy": 0.91, "target_accuracy_unmarked": 0.5,
                          "target_accuracy_marked": 1.0, "flip_rate": 0.3}}
    comps = {0: fake_comparison(0, [3.0, 1.0, 0.5], [0.5, 0.1, 0.0], [0.0, 0.2, 0.1]),
             1: fake_comparison(1, [2.0, 1.5, 0.2], [0.0, 0.6, 0.1], [0.3, 0.1, 0.0])}
    rows, classes = [], []
    for seed, comp in comps.items():
        row, cls = bench.seed_row("square", seed, {"test_accuracy": 0.9}, short, acc, comp)
        rows.append(row)
        classes += cls
    assert [r["planted_rank"] for r in rows] == [1, 2] and [r["planted_first"] for r in rows] == [True, False]
    assert rows[1]["difference_planted"] == 1.5 and rows[1]["difference_best_other"] == 2.0
    assert rows[0]["mark_corr_shortcut"] == 0.5 and rows[0]["mark_corr_clean"] == 0.0
    (summary,) = bench.summarise(rows, classes)
    assert summary["planted_first"] == 1 and summary["planted_rank_mean"] == 1.5
    # compare: planted scores 3.0 and 1.5 against others 1.0, 0.5, 2.0, 0.2 -> 7 of 8 pairs ordered right
    assert summary["auc_compare"] == pytest.approx(7 / 8)
    # detection in the shortcut models: planted 0.5, 0.6 above every other class (0.1, 0.0, 0.0, 0.1)
    assert summary["auc_mark_corr_shortcut"] == 1.0 and summary["mark_corr_first_shortcut"] == 2
    # clean models: planted 0.0, 0.1 against 0.2, 0.1, 0.3, 0.0 -> (0+0+0+0.5 + 0+0.5+0+1) / 8
    assert summary["auc_mark_corr_clean"] == pytest.approx(2 / 8)
    assert summary["auc_mark_corr_shortcut_vs_clean"] == 1.0
    table = bench.markdown(rows, [summary], bench.Settings([0, 1], ["square"], Path("out")), 60.0, "test machine", "abc")
    assert "| square | 2 | 90.0 / 91.0 | 80.0 / 50.0 | 1.0 / 30.0 | 1/2 (mean rank 1.5) | 0.88" in table


def test_every_step_is_a_command_whose_overrides_compose(bench, tmp_path):
    from conftest import compose_cfg

    s = bench.Settings([2], ["square"], tmp_path, generate=(*bench.Settings.generate, *bench.RECIPE))
    short = compose_cfg("train", s.train_overrides(2, "square"), tmp_path / "t")
    assert short.shortcut.target == bench.planted_class(2) == 7 and short.shortcut.share == 0.9
    assert short.paths.models_dir == str(tmp_path / "models")  # never the user's models folder
    assert compose_cfg("train", s.train_overrides(2, None), tmp_path / "c").get("shortcut") is None
    comp = compose_cfg("compare", s.compare_overrides(2, "square"), tmp_path / "k")
    assert comp.model_a.checkpoint == str(tmp_path / "train" / "clean_s2" / "model.pt")
    assert comp.model_b.checkpoint == str(tmp_path / "train" / "square_s2" / "model.pt")
    assert comp.mark.path == str(tmp_path / "train" / "square_s2" / "mark.pt") and comp.get("reference") is None
    assert comp.regularizer.tv.weight == 0.001  # RECIPE: the recipe selected on the development seeds
