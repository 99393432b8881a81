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
from ..objectives import Term
from .rows import Row, target_weights

log = logging.getLogger("protoscope")


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "class"


def image_filename(row: Row) -> str:
    if not row.target.is_class:
        return f"{slug(row.name)}_seed{row.seed}.png"  # e.g. channel-7-of-stage2_seed0.png
    return f"{row.key.replace('+', '-')}_{slug(row.name)}_seed{row.seed}.png"


def record_label(record: dict[str, Any]) -> str:
    """A prototype record's target in words: its class name or its feature (``channel 7 of stage2``)."""
    return str(record["class_name"] if "class_name" in record else record["target"])


def record_score(record: dict[str, Any]) -> str:
    """The record's measure of success, short: the target probability, or a feature's activation."""
    return f"p={record['target_prob']:.2f}" if "target_prob" in record else f"a={record['target_activation']:.3g}"


@torch.no_grad()
def prototype_records(classifier: Classifier, images: torch.Tensor, rows: Sequence[Row], seed: int = 0,
                      batch_size: int = 64, objective: Term | None = None) -> list[dict[str, Any]]:
    """Per prototype, measured without transforms: for a class target its logit, probability and rank
    (1 = top-1); for a feature target its activation (the negated loss of the ``objective``'s target term).

    ``seed`` is the run's base seed; ``seed_index`` the row's index among its target's seeds.
    """
    device = classifier.network.mean.device
    logits = torch.cat([classifier.network(images[i : i + batch_size].to(device)).float().cpu()
                        for i in range(0, len(images), batch_size)])
    if rows and not rows[0].target.is_class:
        return feature_records(classifier, images, rows, seed, logits, objective)
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


def feature_records(classifier: Classifier, images: torch.Tensor, rows: Sequence[Row], seed: int,
                    logits: torch.Tensor, objective: Term | None) -> list[dict[str, Any]]:
    """Records of feature rows: the target, its activation, and the class the model sees."""
    from .targets import target_values

    if objective is None:
        raise ValueError("records of feature targets need the objective that defines them")
    values = target_values(classifier, objective, images, rows)
    probs = logits.softmax(-1)
    return [{
        "target": row.name,
        "target_kind": row.target.kind,
        "target_index": row.target.ids[0],
        "seed": int(seed),
        "seed_index": row.seed,
        "target_activation": float(values[r]),
        "top_class": classifier.class_names[int(logits[r].argmax())],
        "top_prob": float(probs[r].max()),
        "file": f"prototypes/{image_filename(row)}",
    } for r, row in enumerate(rows)]


def summary_line(records: Sequence[dict[str, Any]]) -> str:
    """The run's result in a few words, for the log."""
    n = len(records)
    if records and "target_prob" in records[0]:
        return (f"top-1 {sum(r['target_rank'] == 1 for r in records)}/{n}, mean target prob "
                f"{sum(r['target_prob'] for r in records) / n:.3f}")
    return f"{n} prototypes, mean target activation {sum(r['target_activation'] for r in records) / max(n, 1):.3f}"


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
        ax.set_title(f"{record_label(rec)[:22]}\nseed {rec['seed']} #{rec['seed_index']}  {record_score(rec)}",
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
    targets = {"class_indices": [list(r.classes) if len(r.classes) > 1 else r.classes[0] for r in rows],
               "class_names": [r.name for r in rows]} if all(r.target.is_class for r in rows) else \
        {"target_kind": rows[0].target.kind, "target_indices": [r.target.ids[0] for r in rows],
         "targets": [r.name for r in rows]}
    write_torch(out_dir / "prototypes.pt", {
        "images": images,
        **targets,
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
        by_target: dict[str, list[int]] = {}
        for i, rec in enumerate(records):
            by_target.setdefault(record_label(rec), []).append(i)
        for name, idx in by_target.items():
            lg.log_image(key=f"prototypes/{slug(name)}", images=[images[i].float().cpu() for i in idx],
                         caption=[f"seed {records[i]['seed']} #{records[i]['seed_index']} {record_score(records[i])}"
                                  for i in idx])
        columns = list(records[0])
        lg.log_table(key="prototypes/metrics", columns=columns, data=[[r[c] for c in columns] for r in records])
        keys = ("target_prob", "target_logit") if "target_prob" in records[0] else ("target_activation",)
        summary = {f"final/{k}_mean": sum(r[k] for r in records) / len(records) for k in keys}
        if "target_rank" in records[0]:
            summary["final/top1_rate"] = sum(r["target_rank"] == 1 for r in records) / len(records)
        lg.log_metrics(summary)
