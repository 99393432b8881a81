"""Writing a comparison (atomically): ranking tables, difference heat maps, side-by-side grids, W&B logs."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import Tensor

from ..generation.export import save_figure, slug
from ..io import to_uint8, write_csv, write_json, write_png, write_text
from .core import TERMS, Comparison

log = logging.getLogger("protoscope")
MIN_PIXELS = 112  # small images are enlarged (nearest neighbour) to at least this size in the PNGs


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_table(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in records]
    return "\n".join(lines) + "\n"


def ranking_markdown(comp: Comparison, detection: Sequence[dict[str, Any]] | None = None) -> str:
    a, b = comp.a.label, comp.b.label
    w = ", ".join(f"{t} {comp.weights[t]:g}" for t in TERMS)
    cols = ["rank", "class_index", "class_name", "difference", *TERMS, "pixel_l1", "cross_prob",
            f"p_{a}({a})", f"p_{b}({a})", f"p_{b}({b})", f"p_{a}({b})"]
    extra = [c for c in ("natural_cross",) if c in comp.records[0]]
    text = [
        f"# How differently {a} and {b} see each class\n",
        f"{a}: {comp.a.source} ({comp.a.info.get('model', comp.a.classifier.name)})  \n"
        f"{b}: {comp.b.source} ({comp.b.info.get('model', comp.b.classifier.name)})  \n"
        f"{len(comp.a.class_ids)} prototypes per model ({len(comp.records)} classes x "
        f"{comp.records[0]['seeds']} seeds), same rows and seeds.\n",
        f"difference: weighted mean ({w}) of the three terms, each divided by its mean |value| over the classes "
        f"(1 = as different as the average class). pixel: mean |seed-mean of P_{b} - P_{a}| (intensity); "
        f"cross: logit each model loses on the other model's prototype (cross_prob: the same in probability); "
        f"path: 1 - activation-path agreement (Spearman) of the two prototypes inside each model. "
        f"p_M(X): model M's probability of the class on X's prototypes (mean over seeds).\n",
        markdown_table(comp.records, cols + extra),
    ]
    if detection:
        text += ["\n## Mark detection\n",
                 "mark_corr: correlation of the class's prototypes with the mark pattern (1 = the mark itself; "
                 "mean over seeds); paste_logprob_change: log-probability gained when the mark is pasted on the model's "
                 "neutral baseline.\n",
                 markdown_table(detection, ["model", "class_index", "class_name", "mark_corr", "mark_corr_rank",
                                            "paste_logit_change", "paste_logprob_change"])]
    return "\n".join(text)


def _enlarge(arr: np.ndarray) -> np.ndarray:
    k = max(1, math.ceil(MIN_PIXELS / arr.shape[0]))
    return arr.repeat(k, 0).repeat(k, 1)


def _rgb(image: Tensor) -> np.ndarray:
    arr = to_uint8(image)
    return np.repeat(arr[..., None], 3, -1) if arr.ndim == 2 else arr


def heat_rgb(diff: Tensor, limit: float) -> np.ndarray:
    """A ``[C,H,W]`` signed difference (channel mean) as an RGB heat map: red where B is brighter, blue darker."""
    import matplotlib

    value = diff.float().mean(0).cpu().numpy() / max(limit, 1e-8)
    rgba = matplotlib.colormaps["RdBu_r"]((value.clip(-1, 1) + 1) / 2)
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def side_by_side(images_a: Tensor, images_b: Tensor, limit: float) -> np.ndarray:
    """Rows = seeds; columns = A's prototype, B's prototype, their difference B - A (enlarged, 2 px gaps)."""
    rows = []
    for pa, pb in zip(images_a, images_b):
        cells = [_enlarge(_rgb(pa)), _enlarge(_rgb(pb)), _enlarge(heat_rgb(pb - pa, limit))]
        gap = np.full((cells[0].shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([cells[0], gap, cells[1], gap, cells[2]], 1))
    gap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([x for r in rows for x in (r, gap)][:-1], 0)


def heatmap_figure(comp: Comparison, limit: float, max_panels: int = 20):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = comp.records[:max_panels]
    cols = min(5, len(recs))
    nrows = math.ceil(len(recs) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.3 * cols, 2.5 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, rec in zip(axes.flat, recs):
        ax.imshow(heat_rgb(comp.diff_maps[rec["class_index"]], limit))
        ax.set_title(f"#{rec['rank']} {rec['class_name'][:18]}\ndiff {rec['difference']:.3f}", fontsize=8)
    fig.suptitle(f"seed-mean {comp.b.label} - {comp.a.label} (red: brighter in {comp.b.label}; ±{limit:.2f})",
                 fontsize=9)
    fig.tight_layout()
    return fig


def grid_figure(comp: Comparison, max_rows: int = 10):
    """Top classes: A's and B's first prototype and the seed-mean difference, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = comp.records[:max_rows]
    limit = _limit(comp)
    fig, axes = plt.subplots(len(recs), 3, figsize=(6.3, 2.1 * len(recs)), squeeze=False)
    for row, rec in zip(axes, recs):
        c = rec["class_index"]
        i = comp.rows_of(c)[0]
        for ax, img, title in ((row[0], _rgb(comp.a.images[i]), comp.a.label), (row[1], _rgb(comp.b.images[i]), comp.b.label),
                               (row[2], heat_rgb(comp.diff_maps[c], limit), f"{comp.b.label} - {comp.a.label}")):
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
        row[0].set_ylabel(f"#{rec['rank']} {rec['class_name'][:16]}", fontsize=8)
    fig.tight_layout()
    return fig


def _limit(comp: Comparison) -> float:
    """One colour scale for every heat map: the largest absolute seed-mean difference (channel mean)."""
    return max(float(d.float().mean(0).abs().max()) for d in comp.diff_maps.values()) or 1.0


def write_comparison(comp: Comparison, out_dir: str | Path, detection: Sequence[dict[str, Any]] | None = None,
                     meta: dict[str, Any] | None = None, max_panels: int = 20) -> dict[str, Path]:
    """ranking.csv|md, comparison.json, heatmaps.png, side_by_side.png, heatmaps/ and side_by_side/ per class."""
    out_dir = Path(out_dir)
    limit = _limit(comp)
    files = {
        "ranking_csv": write_csv(out_dir / "ranking.csv", comp.records),
        "ranking_md": write_text(out_dir / "ranking.md", ranking_markdown(comp, detection)),
        "json": write_json(out_dir / "comparison.json", {
            **(meta or {}), "labels": [comp.a.label, comp.b.label], "sources": [comp.a.source, comp.b.source],
            "models": [comp.a.info, comp.b.info], "weights": comp.weights, "heatmap_limit": limit,
            "ranking": comp.records, "detection": list(detection or []),
        }),
    }
    if detection:
        files["detection_csv"] = write_csv(out_dir / "detection.csv", detection)
    for rec in comp.records:
        c = rec["class_index"]
        name = f"{rec['rank']:03d}_{c}_{slug(rec['class_name'])}.png"
        write_png(out_dir / "heatmaps" / name, _enlarge(heat_rgb(comp.diff_maps[c], limit)))
        rows = comp.rows_of(c)
        write_png(out_dir / "side_by_side" / name, side_by_side(comp.a.images[rows], comp.b.images[rows], limit))
    files["heatmaps"] = out_dir / "heatmaps.png"
    save_figure(heatmap_figure(comp, limit, max_panels), files["heatmaps"])
    files["side_by_side"] = out_dir / "side_by_side.png"
    save_figure(grid_figure(comp), files["side_by_side"])
    log.info("wrote the comparison of %s and %s (%d classes) to %s", comp.a.label, comp.b.label,
             len(comp.records), out_dir)
    return files


def log_comparison(loggers: Sequence[Any], files: dict[str, Path], comp: Comparison,
                   detection: Sequence[dict[str, Any]] | None = None) -> None:
    """Summary scalars to every logger; to W&B also the ranking (and detection) tables and the figures."""
    top = comp.records[0]
    scalars = {"compare/top_difference": float(top["difference"]), "compare/top_class_index": float(top["class_index"]),
               **{f"compare/mean_{t}": float(np.mean([r[t] for r in comp.records])) for t in ("difference", *TERMS)}}
    for lg in loggers:
        lg.log_metrics(scalars)
        if type(lg).__name__ != "WandbLogger":
            continue
        for key, rows in (("compare/ranking", comp.records), ("compare/detection", detection or [])):
            if rows:
                columns = list(dict.fromkeys(k for r in rows for k in r))
                lg.log_table(key=key, columns=columns, data=[[r.get(c) for c in columns] for r in rows])
        lg.log_image(key="compare/heatmaps", images=[str(files["heatmaps"])])
        lg.log_image(key="compare/side_by_side", images=[str(files["side_by_side"])])
