"""Writing a generation run's results: images, grid, tensors, metrics, and W&B logs."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from ..io import write_csv, write_json, write_png, write_torch
from ..metrics import target_scores
from ..models import Classifier
from .rows import Row, target_weights

log = logging.getLogger("protoscope")


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "class"


def image_filename(row: Row) -> str:
    return f"{row.key.replace('+', '-')}_{slug(row.name)}_seed{row.seed}.png"


@torch.no_grad()
def prototype_records(classifier: Classifier, images: torch.Tensor, rows: Sequence[Row], seed: int = 0,
                      batch_size: int = 64) -> list[dict[str, Any]]:
    """Per prototype: target logit, probability and rank (1 = top-1), measured without transforms.

    ``seed`` is the run's base seed; ``seed_index`` the row's index among its class's seeds.
    """
    device = classifier.network.mean.device
    logits = torch.cat([classifier.network(images[i : i + batch_size].to(device)).float().cpu()
                        for i in range(0, len(images), batch_size)])
    target = target_scores(logits, target_weights(rows, classifier.num_classes),
                           torch.tensor([row.classes[0] for row in rows]))
    records = []
    for r, row in enumerate(rows):
        records.append({
            "class_index": row.class_index,
            "class_name": row.name,
            "seed": int(seed),
            "seed_index": row.seed,
            "target_logit": float(target.logit[r]),
            "target_prob": float(target.prob[r]),
            "target_rank": int(target.rank[r]),
            "top_class": classifier.class_names[int(logits[r].argmax())],
            "file": f"prototypes/{image_filename(row)}",
        })
    return records


def grid_figure(images: torch.Tensor, records: Sequence[dict[str, Any]], columns: int | None = None):
    """A labelled matplotlib grid: one column per seed (or ``columns``), titles with class and prob."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    seeds = len({r["seed_index"] for r in records})
    cols = columns or max(1, min(seeds if seeds > 1 else n, 8))
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(2.2 * cols, 2.5 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (img, rec) in enumerate(zip(images, records)):
        ax = axes.flat[i]
        arr = img.clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray" if arr.shape[-1] == 1 else None)
        ax.set_title(f"{rec['class_name'][:22]}\nseed {rec['seed']} #{rec['seed_index']}  p={rec['target_prob']:.2f}",
                     fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    from ..io import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", pad_inches=0.15)  # titles never clipped
    plt.close(fig)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def export_prototypes(out_dir: Path, images: torch.Tensor, rows: Sequence[Row], records: list[dict[str, Any]]) -> None:
    """Write prototypes/, grid.png, prototypes.pt, metrics.json and metrics.csv (all atomically)."""
    out_dir = Path(out_dir)
    images = images.detach().float().cpu().clamp(0, 1)
    for img, row in zip(images, rows):
        write_png(out_dir / "prototypes" / image_filename(row), img)
    save_figure(grid_figure(images, records), out_dir / "grid.png")
    write_torch(out_dir / "prototypes.pt", {
        "images": images,
        "class_indices": [list(r.classes) if len(r.classes) > 1 else r.classes[0] for r in rows],
        "class_names": [r.name for r in rows],
        "seeds": [r.seed for r in rows],          # seed index of each row
        "seed": int(records[0]["seed"]) if records else 0,   # the run's base seed
    })
    write_json(out_dir / "metrics.json", records)
    write_csv(out_dir / "metrics.csv", records)
    log.info("wrote %d prototypes to %s", len(rows), out_dir)


def log_to_loggers(loggers: Sequence[Any], out_dir: Path, images: torch.Tensor, records: list[dict[str, Any]]) -> None:
    """Send the grid, each class's images and the per-prototype metrics to W&B loggers."""
    for lg in loggers:
        if type(lg).__name__ != "WandbLogger":
            continue
        lg.log_image(key="prototypes/grid", images=[str(out_dir / "grid.png")])
        by_class: dict[str, list[int]] = {}
        for i, rec in enumerate(records):
            by_class.setdefault(rec["class_name"], []).append(i)
        for name, idx in by_class.items():
            lg.log_image(key=f"prototypes/{slug(name)}", images=[images[i].float().cpu() for i in idx],
                         caption=[f"seed {records[i]['seed']} #{records[i]['seed_index']} p={records[i]['target_prob']:.3f}"
                                  for i in idx])
        columns = list(records[0])
        lg.log_table(key="prototypes/metrics", columns=columns, data=[[r[c] for c in columns] for r in records])
        summary = {
            "final/target_prob_mean": sum(r["target_prob"] for r in records) / len(records),
            "final/top1_rate": sum(r["target_rank"] == 1 for r in records) / len(records),
            "final/target_logit_mean": sum(r["target_logit"] for r in records) / len(records),
        }
        lg.log_metrics(summary)
