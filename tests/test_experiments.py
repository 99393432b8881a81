"""experiments/fashion_table/run.py: its table numbers are the means of the runs' CSVs."""

from __future__ import annotations

import csv
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

RUN_PY = Path(__file__).resolve().parents[1] / "experiments" / "fashion_table" / "run.py"
FIELDS = ["class_index", "class_name", "seed", "source", "spearman/mean", "l1/mean", "spearman/percentile",
          "l1/percentile", "target_prob", "target_rank", "top_class"]


@pytest.fixture(scope="module")
def ft():
    spec = importlib.util.spec_from_file_location("fashion_table_run", RUN_PY)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def fake_run(folder: Path, rows: list[dict], natural: dict | None = None, baseline_rows: list[dict] = ()) -> Path:
    """A run folder with a hand-written evaluation/path_similarity.csv (and optionally .json)."""
    ev = folder / "evaluation"
    ev.mkdir(parents=True)
    with open(ev / "path_similarity.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({"source": "prototype", "top_class": "x", **r})
        for r in baseline_rows:  # rows of another source (protoscope-evaluate baseline_run=) are ignored
            w.writerow({"source": "lucent", "top_class": "x", **r})
    if natural is not None:
        (ev / "path_similarity.json").write_text(json.dumps({"natural": {
            c: {"class_index": i, "count": 5, **{m: {"mean_median": v, "p05": [], "median": [], "p95": []}
                                                for m, v in meds.items()}}
            for i, (c, meds) in enumerate(natural.items())}}))
    return folder


def row(cls: int, name: str, seed: int, s: float, l1: float, sp: float, lp: float, p: float, rank: int) -> dict:
    return {"class_index": cls, "class_name": name, "seed": seed, "spearman/mean": s, "l1/mean": l1,
            "spearman/percentile": sp, "l1/percentile": lp, "target_prob": p, "target_rank": rank}


A_ROWS = [row(0, "Shirt", 0, 0.50, 0.60, 10.0, 0.0, 0.9, 1), row(0, "Shirt", 1, 0.70, 0.40, 100.0, 50.0, 0.5, 2),
          row(1, "Bag", 0, 0.90, 0.20, 100.0, 100.0, 0.99, 1), row(1, "Bag", 1, 0.30, 0.80, 0.0, 0.0, 0.2, 3)]
B_ROWS = [row(0, "Shirt", 0, 0.80, 0.30, 60.0, 20.0, 0.95, 1), row(0, "Shirt", 1, 0.82, 0.28, 70.0, 30.0, 0.97, 1),
          row(1, "Bag", 0, 0.60, 0.50, 5.0, 1.0, 0.90, 1), row(1, "Bag", 1, 0.64, 0.45, 7.0, 2.0, 0.91, 1)]


def cells(table: str, label: str) -> list[str]:
    line = next(l for l in table.splitlines() if l.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_numbers_equal_csv_means(ft, tmp_path):
    a = ft.read_run(fake_run(tmp_path / "a", A_ROWS, natural={"Shirt": {"spearman": 0.8, "l1": 0.2},
                                                               "Bag": {"spearman": 0.6, "l1": 0.4}},
                             baseline_rows=[row(0, "Shirt", 0, -1.0, 9.0, 0.0, 0.0, 0.0, 9)]))
    b = ft.read_run(fake_run(tmp_path / "b", B_ROWS))
    assert len(a.rows) == 4  # the baseline source row is not a prototype
    table = ft.main_table([("A", a), ("B", b)])
    ca, cb = cells(table, "A"), cells(table, "B")
    head = ft.MAIN_HEAD
    col = {h: i for i, h in enumerate(head)}
    s = [r["spearman/mean"] for r in A_ROWS]
    assert ca[col["n"]] == "4"
    assert ca[col["Spearman ↑ (mean ± std)"]] == f"{statistics.fmean(s):.3f} ± {statistics.stdev(s):.3f}" == "0.600 ± 0.258"
    assert ca[col["Spearman pct (mean)"]] == "52.5"
    assert ca[col["Spearman = 100 pct"]] == "50%"
    assert ca[col["L1 ↓ (mean ± std)"]] == "0.500 ± 0.258"
    assert ca[col["L1 pct (mean)"]] == "37.5"
    assert ca[col["L1 = 100 pct"]] == "25%"
    assert ca[col["top-1"]] == "2/4"
    assert ca[col["target p"]] == f"{statistics.fmean(r['target_prob'] for r in A_ROWS):.3f}" == "0.647"
    # natural medians: no summary.md here, so the mean over classes of the per-class medians
    assert ca[col["natural median Spearman"]] == "0.700 (mean of class medians)"
    assert ca[col["natural median L1"]] == "0.300 (mean of class medians)"
    assert cb[col["Spearman ↑ (mean ± std)"]].startswith("0.715 ± ")
    assert cb[col["top-1"]] == "4/4" and cb[col["natural median L1"]] == "–"
    assert (a.classes_all_top1(), b.classes_all_top1()) == (0, 2)

    per_class = ft.per_class_tables([("A", a), ("B", b)])
    shirt = [l for l in per_class.splitlines() if l.startswith("| Shirt |")]
    assert shirt[0] == "| Shirt | 0.600 (pct 55.0) | 0.810 (pct 65.0) | 0.800 |"   # Spearman
    assert shirt[1] == "| Shirt | 0.500 (pct 25.0) | 0.290 (pct 25.0) | 0.200 |"   # L1
    assert shirt[2] == "| Shirt | 1/2, p 0.70 | 2/2, p 0.96 |"


def test_pooled_natural_row_and_selection(ft, tmp_path):
    folder = fake_run(tmp_path / "a", A_ROWS)
    (folder / "evaluation" / "summary.md").write_text(
        "| **all classes** | prototype | 4 | 0.6 | 1 | 0% | 0.5 | 0 | 0% | 0.6 |\n"
        "| **all classes** | natural | 400 | 0.855 [0.652, 0.934] | – | – | 0.205 [0.113, 0.357] | – | – | – |\n")
    a = ft.read_run(folder)
    assert ft.natural_cells(a) == ["0.855 [0.652, 0.934]", "0.205 [0.113, 0.357]"]
    b = ft.read_run(fake_run(tmp_path / "b", B_ROWS))
    c = ft.read_run(fake_run(tmp_path / "c", [dict(r, **{"spearman/percentile": 0.0}) for r in B_ROWS]))
    # a has the highest percentile but not every prototype top-1; b beats c on percentile
    assert ft.select_tuned([("a", a), ("c", c), ("b", b)])[0] == "b"
    assert ft.select_tuned([("a", a)]) is None


def test_resume_needs_same_command(ft, tmp_path):
    spec = ft.Spec("grid/x", "x", ["experiment=[fashion,paper]", "optimizer.lr=0.01"])
    cmd = spec.command(tmp_path, seeds=3, steps=None)
    assert cmd[:3] == ["protoscope-generate", "experiment=[fashion,paper]", "optimizer.lr=0.01"]
    assert "seeds_per_class=3" in cmd and f"hydra.run.dir={tmp_path / 'grid/x'}" in cmd
    assert "schedule.prototype_steps=40" in spec.command(tmp_path, 3, 40)
    assert spec.command(ft.ROOT / "outputs" / "t", 3, None)[-1] == "hydra.run.dir=outputs/t/grid/x"
    own = ft.Spec("s", "s", ["schedule.prototype_steps=500"]).command(tmp_path, 3, 40)
    assert "schedule.prototype_steps=40" not in own
    run_dir = fake_run(tmp_path / "grid" / "x", A_ROWS)
    assert not ft.is_complete(run_dir, cmd)                      # no run_info.json yet
    (run_dir / ft.INFO).write_text(json.dumps({"command": cmd}))
    assert ft.is_complete(run_dir, cmd)
    assert not ft.is_complete(run_dir, spec.command(tmp_path, seeds=4, steps=None))  # other settings: rerun


def test_results_markdown(ft, tmp_path):
    import argparse

    paper = ft.Spec("paper", "paper recipe (defaults)", [ft.PAPER])
    grid = ft.Spec("grid/lr", "lr", [ft.PAPER, "optimizer.lr=0.01"], group="grid")
    held = ft.Spec("paper_tuned_heldout", "tuned (held-out)", [ft.PAPER, "optimizer.lr=0.01", "seed=1"])
    a = ft.read_run(fake_run(tmp_path / "paper", A_ROWS))
    b = ft.read_run(fake_run(tmp_path / "grid" / "lr", B_ROWS))
    b.info = {"seconds_in_run": 12.34, "seconds_wall": 15.0, "command": ["protoscope-generate", "x=1"]}
    args = argparse.Namespace(seeds=2, steps=None, out="outputs/fashion_table", force=False)
    out = tmp_path / "results.md"
    tuned = ft.Tuned("paper recipe, tuned", (grid, b), (held, a))
    table = ft.write_results(out, tmp_path, [(paper, a)], [(grid, b)], [tuned], args, 1.0)
    text = out.read_text()
    assert table in text
    row_sel = cells(table, "paper recipe, tuned: optimizer.lr=0.01 (selection seeds)")
    row_held = cells(table, "paper recipe, tuned: optimizer.lr=0.01 (held-out seeds, seed=1)")
    col = ft.MAIN_HEAD.index("Spearman ↑ (mean ± std)")
    assert row_sel[col].startswith("0.715 ± ") and row_held[col] == "0.600 ± 0.258"
    assert "extension beyond the paper: paper + bn_stats, tuned' made every prototype top-1" in text
    assert not paper.extension and ft.Spec("e", "e", [ft.PAPER, "regularizer=[tv,bn_stats]"]).extension
    assert cells(text, "optimizer.lr=0.01")[1:4] == ["2/2", "4/4", "0.932"]   # grid table
    assert "| grid/lr | 12.3 | 15.0 | `protoscope-generate x=1` |" in text
