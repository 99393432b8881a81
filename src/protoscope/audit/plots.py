"""The audit's figures: the screening's top classes and the entanglement matrix (written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .entanglement import Entanglement
    from .screening import Screening


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def screening_figure(screening: "Screening", path: Path, show: int = 20, highlight: Sequence[int] = ()) -> Path:
    """Horizontal bars: mean logit gain (± std over carriers) of the top ``show`` classes; ``highlight`` red."""
    from ..generation.export import save_figure

    plt = _plt()
    recs = screening.records[:show]
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * len(recs) + 1.2))
    y = list(range(len(recs)))[::-1]
    colours = ["tab:red" if r["class_index"] in set(highlight) else "tab:blue" for r in recs]
    ax.barh(y, [r["logit_gain"] for r in recs], xerr=[r["logit_gain_std"] for r in recs], color=colours,
            error_kw={"lw": 0.8})
    ax.set_yticks(y, [f"#{r['rank']} {r['class_name'][:24]} ({r['class_index']})" for r in recs], fontsize=7)
    ax.set_xlabel(f"logit gain when the mark is pasted (mean ± std over {len(screening.carriers)} carriers)", fontsize=8)
    ax.axvline(0, color="k", lw=0.5)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def entanglement_figure(ent: "Entanglement", path: Path) -> Path:
    """The share matrix of the run's classes, ordered by cluster, with its values when small enough."""
    from ..generation.export import save_figure

    plt = _plt()
    in_cluster = [c for g in ent.clusters for c in g]
    order = in_cluster + [c for c in ent.classes if c not in in_cluster]
    index = [ent.classes.index(c) for c in order]
    square = ent.square()[index][:, index].numpy()
    n = len(order)
    fig, ax = plt.subplots(figsize=(min(12, 1.2 + 0.45 * n), min(11, 1.0 + 0.45 * n)))
    im = ax.imshow(square.clip(-1, 1), cmap="RdBu_r", vmin=-1, vmax=1)
    labels = [ent.names[c][:18] for c in order]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("class k raised", fontsize=8)
    ax.set_ylabel("prototypes of class c", fontsize=8)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{square[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, label="share of c's own logit gain that k gets")
    fig.tight_layout()
    save_figure(fig, path)
    return path
