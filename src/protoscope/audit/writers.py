"""Writing an audit (atomically): one csv and md per table, a summary, and the W&B / CSV logs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..comparison.writers import markdown_table
from ..io import write_csv, write_json, write_text

# The columns each table shows in its markdown file (the csv has every column).
MD_COLUMNS = {
    "screening": ["rank", "class_index", "class_name", "logit_gain", "logit_gain_std", "logprob_gain",
                  "logprob_gain_std", "logprob_rank", "median_carrier_rank", "carriers"],
    "screening_photos": ["rank", "class_index", "class_name", "logit_gain", "logit_gain_std", "logprob_gain",
                         "logprob_rank", "median_carrier_rank", "carriers"],
    "detection": ["detection_rank", "class_index", "class_name", "detection", "detection_min", "detection_max",
                  "prototypes"],
    "entanglement_pairs": ["rank", "class_a", "name_a", "class_b", "name_b", "mutual", "a_raises_b", "b_raises_a"],
    "entanglement_clusters": ["cluster", "classes", "class_indices"],
    "patch_gains": ["rank", "row", "class_index", "class_name", "seed", "logprob_gain", "logprob_gain_std",
                    "logit_gain", "logit_gain_std", "hit_rate"],
    "candidates": ["rank", "class_index", "class_name", "flip_rate", "logprob_gain", "classes_flipped",
                   "carrier_classes", "flip_z", "gain_z", "candidate"],
}
MD_ROWS = 50  # the markdown shows the first rows; the csv has all


def write_tables(out_dir: Path, tables: Mapping[str, Sequence[dict[str, Any]]], command: str) -> dict[str, Path]:
    """``<name>.csv`` (every row, each naming the command) and ``<name>.md`` (the first rows) per table."""
    files = {}
    for name, rows in tables.items():
        if not rows:
            continue
        files[f"{name}_csv"] = write_csv(out_dir / f"{name}.csv", [{**r, "command": command} for r in rows])
        columns = MD_COLUMNS.get(name) or list(dict.fromkeys(k for r in rows for k in r))
        more = f"\n({len(rows) - MD_ROWS} more rows in {name}.csv)\n" if len(rows) > MD_ROWS else ""
        files[f"{name}_md"] = write_text(out_dir / f"{name}.md", f"# {name}\n\n`{command}`\n\n"
                                         + markdown_table(rows[:MD_ROWS], columns) + more)
    return files


def write_summary(out_dir: Path, results: Mapping[str, Any], command: str, model: str) -> Path:
    """``audit.json`` (every table and number) and ``summary.md`` (the head of each table)."""
    write_json(out_dir / "audit.json", {"command": command, "model": model,
                                        **{name: {"tables": r.tables, "summary": r.summary} for name, r in results.items()}})
    text = [f"# Audit of {model}\n", f"`{command}`\n"]
    for name, r in results.items():
        for table, rows in r.tables.items():
            if rows and table in MD_COLUMNS or table == "screening_classes":
                columns = MD_COLUMNS.get(table) or list(rows[0])
                text += [f"\n## {table}\n", markdown_table(rows[:10], columns)]
    return write_text(out_dir / "summary.md", "\n".join(text))


def log_results(loggers: Sequence[Any], results: Mapping[str, Any]) -> None:
    """Summary numbers to every logger; to W&B also every table and figure."""
    scalars = {k: float(v) for r in results.values() for k, v in r.summary.items()}
    for lg in loggers:
        lg.log_metrics(scalars)
        if type(lg).__name__ != "WandbLogger":
            continue
        for r in results.values():
            for name, rows in r.tables.items():
                if rows:
                    columns = list(dict.fromkeys(k for row in rows for k in row))
                    lg.log_table(key=f"audit/{name}", columns=columns,
                                 data=[[str(v) if isinstance(v, list) else v for v in (row.get(c) for c in columns)]
                                       for row in rows])
            for name, path in r.figures.items():
                if str(path).endswith(".png"):
                    lg.log_image(key=f"audit/{name}", images=[str(path)])
