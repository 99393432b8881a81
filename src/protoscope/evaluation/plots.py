"""Figures: per-layer scores against the natural band, and percentile strips per source."""

from __future__ import annotations

from typing import Sequence

import torch

from ..metrics.image_stats import image_statistics
from .core import EvaluationResult

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _natural_of(sources: Sequence[EvaluationResult], c: int) -> EvaluationResult:
    return next(s for s in sources if c in s.natural)


def _panel(ax, x, band: torch.Tensor, lines: list[tuple[EvaluationResult, torch.Tensor]], title: str, measure: str):
    ax.fill_between(x, band[0].numpy(), band[2].numpy(), color="grey", alpha=0.3, label="natural 5–95%")
    ax.plot(x, band[1].numpy(), color="black", lw=1.2, ls="--", label="natural median")
    for k, (src, values) in enumerate(lines):
        colour = COLOURS[k % len(COLOURS)]
        for i, row in enumerate(values):
            ax.plot(x, row.numpy(), color=colour, lw=1.0, alpha=0.8, label=src.label if i == 0 else None)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(measure + (" (lower = closer)" if measure == "l1" else ""), fontsize=8)


def layer_figure(sources: Sequence[EvaluationResult], measure: str, max_panels: int = 12):
    """One panel per class (or one mean-over-classes panel beyond ``max_panels`` classes)."""
    plt = _plt()
    main = sources[0]
    layers = main.layer_names
    x = list(range(len(layers)))
    classes = list(dict.fromkeys(c for s in sources for c in s.classes))
    if len(classes) <= max_panels:
        panels = []
        for c in classes:
            lines = [(s, s.scores[measure][s.rows_of(c)].float()) for s in sources if s.rows_of(c)]
            owner = _natural_of(sources, c)
            panels.append((owner.class_name(c), owner.band(c, measure).float(), lines))
    else:
        bands = torch.stack([_natural_of(sources, c).band(c, measure) for c in classes]).mean(0).float()
        lines = []
        for s in sources:  # one line per source: the mean over its classes of the per-class mean
            per_class = torch.stack([s.scores[measure][s.rows_of(c)].mean(0) for c in s.classes])
            lines.append((s, per_class.mean(0, keepdim=True).float()))
        panels = [(f"mean over {len(classes)} classes", bands, lines)]
    cols = min(len(panels), 3)
    nrows = (len(panels) + cols - 1) // cols
    width = max(4.0, 0.25 * len(layers) + 2.0)
    fig, axes = plt.subplots(nrows, cols, figsize=(width * cols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    step = max(1, len(layers) // 16)
    for ax, (title, band, lines) in zip(axes.flat, panels):
        _panel(ax, x, band, lines, title, measure)
        ax.set_xticks(x[::step])
        ax.set_xticklabels(layers[::step], rotation=60, ha="right", fontsize=7)
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def percentile_figure(sources: Sequence[EvaluationResult], measures: Sequence[str]):
    """Strip plot of row percentiles (0–100) per source, one panel per measure."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(measures), figsize=(2.0 + 1.4 * len(sources) * len(measures), 3.2), squeeze=False)
    gen = torch.Generator().manual_seed(0)
    for ax, m in zip(axes.flat, measures):
        for k, s in enumerate(sources):
            values = s.percentile[m].float()
            jitter = (torch.rand(len(values), generator=gen) - 0.5) * 0.3
            ax.scatter((k + jitter).numpy(), values.numpy(), s=14, alpha=0.7, color=COLOURS[k % len(COLOURS)])
            ax.hlines(float(values.median()), k - 0.3, k + 0.3, color="black", lw=1.5)
        ax.axhline(50, color="grey", ls=":", lw=1)
        ax.set_xticks(range(len(sources)))
        ax.set_xticklabels([s.label for s in sources], fontsize=8)
        ax.set_ylim(-3, 103)
        ax.set_title(f"{m} percentile vs natural", fontsize=9)
    axes.flat[0].set_ylabel("percentile among natural images")
    fig.tight_layout()
    return fig


def examples_figure(sources: Sequence[EvaluationResult], max_rows: int = 12, per_source: int = 2):
    """Per class (at most ``max_rows``): up to ``per_source`` images of each source, then the natural
    photos kept with the reference statistics, each titled with its clipped share and spread."""
    plt = _plt()
    classes = [c for c in dict.fromkeys(c for s in sources for c in s.classes)][:max_rows]
    rows = []
    for c in classes:
        owner = _natural_of(sources, c)
        cells = [(s.images[i], f"{s.label} s{s.seeds[i]}", {k: float(v[i]) for k, v in s.image_stats.items()})
                 for s in sources if s.images is not None for i in s.rows_of(c)[:per_source]]
        natural = owner.natural_examples.get(c)
        if natural is not None:
            stats = image_statistics(natural.float() / 255)
            cells += [(img.float() / 255, "natural", {k: float(v[j]) for k, v in stats.items()})
                      for j, img in enumerate(natural)]
        rows.append((owner.class_name(c), cells))
    cols = max((len(cells) for _, cells in rows), default=1)
    fig, axes = plt.subplots(max(len(rows), 1), cols, figsize=(1.9 * cols, 2.1 * max(len(rows), 1)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (name, cells) in enumerate(rows):
        for k, (image, label, stats) in enumerate(cells):
            ax = axes[r, k]
            shown = image.float().clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
            ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(f"{name if k == 0 else ''}\n{label}\nclip {100 * stats.get('clipped', 0):.0f}% "
                         f"sd {stats.get('spread', 0):.2f}", fontsize=6)
    fig.tight_layout()
    return fig
