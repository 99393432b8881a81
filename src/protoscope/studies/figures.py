"""Figures of a study: each metric against each swept setting, and prototypes across settings."""

from __future__ import annotations

import logging
import math
import re
import textwrap
from pathlib import Path
from typing import Any, Sequence

import torch

from ..generation.export import save_figure
from ..models.class_names import match_class
from .collect import Study, lower_is_better, sort_values

log = logging.getLogger("protoscope")
MAX_SERIES = 8


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "x"


def _numeric(values: Sequence[str]) -> bool:
    try:
        return all(math.isfinite(float(v)) for v in values)
    except ValueError:
        return False


def sensitivity_figure(study: Study, key: str, metric: str):
    """``metric`` against the values of ``key``: every seed as a dot, mean ± std as a line with error bars.

    Other swept settings (if any) become one line each when there are at most 8 combinations, else they
    are pooled. Numeric values sit on a numeric axis (log when they span a factor of 10 or more).
    """
    plt = _pyplot()
    done = [r for r in study.runs if r.status == "completed" and metric in r.metrics]
    values = sort_values(study.value(r, key) for r in study.runs)
    numeric = _numeric(values)
    others = [k for k in study.setting_keys if k != key]
    combos = sort_values(", ".join(f"{k}={study.value(r, k)}" for k in others) for r in done) if others else [""]
    pooled = len(combos) > MAX_SERIES
    if pooled:
        combos = [""]
    x_of = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for j, combo in enumerate(combos):
        runs = [r for r in done if pooled or not others
                or ", ".join(f"{k}={study.value(r, k)}" for k in others) == combo]
        offset = 0.0 if numeric or len(combos) == 1 else (j - (len(combos) - 1) / 2) * 0.08
        xs, means, stds = [], [], []
        for v in values:
            ys = [r.metrics[metric] for r in runs if study.value(r, key) == v]
            if not ys:
                continue
            x = x_of[v] + offset
            ax.scatter([x] * len(ys), ys, s=12, alpha=0.45, color=f"C{j}", linewidths=0)
            mean = sum(ys) / len(ys)
            std = math.sqrt(sum((y - mean) ** 2 for y in ys) / (len(ys) - 1)) if len(ys) > 1 else 0.0
            xs.append(x), means.append(mean), stds.append(std)
        if xs:
            ax.errorbar(xs, means, yerr=stds, color=f"C{j}", marker="o", ms=4, capsize=3, lw=1.2,
                        label=combo or None)
    if numeric:
        positive = [float(v) for v in values if float(v) > 0]
        if len(positive) >= 2 and max(positive) / min(positive) >= 10:
            if len(positive) == len(values):
                ax.set_xscale("log")
            elif all(float(v) >= 0 for v in values):  # zero among decades: linear near 0, log beyond
                ax.set_xscale("symlog", linthresh=min(positive), linscale=0.5)
        ax.set_xticks([float(v) for v in values], values)
        ax.minorticks_off()
    else:
        ax.set_xticks(range(len(values)), [v if len(v) <= 18 else v[:17] + "…" for v in values],
                      rotation=30 if len(values) > 4 else 0, ha="right" if len(values) > 4 else "center")
    ax.set_xlabel(key)
    ax.set_ylabel(f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)")
    seeds = "seeds as dots, mean ± std" + (" (other settings pooled)" if pooled and others else "")
    ax.set_title(f"{metric} vs {key}\n{seeds}", fontsize=9)
    if len(combos) > 1:
        ax.legend(fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_sensitivity_figures(study: Study, metrics: Sequence[str], out_dir: Path) -> list[Path]:
    """One PNG per swept setting key and metric: ``plots/<key>__<metric>.png``."""
    files = []
    for key in study.setting_keys:
        for metric in metrics:
            path = out_dir / "plots" / f"{slug(key)}__{slug(metric)}.png"
            save_figure(sensitivity_figure(study, key, metric), path)
            files.append(path)
    return files


def _load_prototypes(run_dir: Path) -> dict[str, Any] | None:
    try:
        return torch.load(run_dir / "prototypes.pt", map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a report shows what it can
        return None


def _resolve_classes(classes: Sequence[Any] | None, names: list[str], indices: list[Any], limit: int = 4) -> list[int]:
    present = list(dict.fromkeys(c for c in indices if isinstance(c, int)))
    if not classes:
        return present[:limit]
    out = []
    for c in classes:
        label = str(c)
        index = int(label) if label.isdigit() else None
        if index is None:
            for i, n in zip(indices, names):
                if isinstance(i, int) and match_class(label, [n], allow_index=False) is not None:
                    index = i
                    break
        if index is None or index not in present:
            log.warning("report: class %r is not among the prototypes; left out of the grid", c)
            continue
        out.append(index)
    return out


def prototype_grid(study: Study, classes: Sequence[Any] | None, max_rows: int = 24):
    """Rows: settings (their first completed run's seed-0 prototype); columns: the chosen classes."""
    plt = _pyplot()
    settings = [s for s in study.settings() if study.runs_of(s)][:max_rows]
    if not settings:
        return None
    first = _load_prototypes(study.runs_of(settings[0])[0].dir)
    if first is None:
        return None
    wanted = _resolve_classes(classes, list(first["class_names"]), list(first["class_indices"]))
    if not wanted:
        return None
    names = {i: n for i, n in zip(first["class_indices"], first["class_names"]) if isinstance(i, int)}
    fig, axes = plt.subplots(len(settings), len(wanted), figsize=(1.9 * len(wanted) + 2.4, 1.9 * len(settings)),
                             squeeze=False)
    for r, setting in enumerate(settings):
        run = study.runs_of(setting)[0]
        data = _load_prototypes(run.dir)
        for c, cls in enumerate(wanted):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            rows = [] if data is None else [i for i, k in enumerate(data["class_indices"]) if k == cls]
            if rows:
                img = data["images"][rows[0]].clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
            if r == 0:
                ax.set_title(names.get(cls, str(cls))[:20], fontsize=8)
            if c == 0:
                label = [line for k, v in zip(study.setting_keys, setting)
                         for line in textwrap.wrap(f"{k}={v}", 26, break_on_hyphens=False)]
                ax.set_ylabel("\n".join(label) or "all runs", fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig
