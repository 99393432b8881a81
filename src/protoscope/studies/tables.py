"""Tables of a study: one row per run, and one row per setting (mean ± std over seeds)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from .collect import Study, lower_is_better


def runs_table(study: Study) -> list[dict[str, Any]]:
    """``runs.csv``: one row per job: status, every swept key, every metric, seconds, error."""
    metrics = study.metrics()
    rows = []
    for run in study.runs:
        row: dict[str, Any] = {"run": _relative(study, run.dir), "job": run.job_num, "status": run.status,
                               "tag": run.tag}
        row.update({k: study.value(run, k) for k in study.swept})
        row.update({m: run.metrics.get(m) for m in metrics})
        row.update(wall_seconds=run.record.get("wall_seconds"), error=run.error)
        rows.append(row)
    return rows


def _relative(study: Study, path: Any) -> str:
    for root in study.roots:
        try:
            return str(path.relative_to(root.parent))
        except ValueError:
            continue
    return str(path)


@dataclass
class SettingRow:
    setting: tuple[str, ...]
    n: int                          # completed runs (seeds)
    failed: int                     # failed, killed or interrupted runs
    running: int
    mean: dict[str, float]
    std: dict[str, float]


def sensitivity_rows(study: Study) -> list[SettingRow]:
    """Per setting: mean and sample std over its completed runs of every metric, and job counts."""
    metrics = study.metrics()
    out = []
    for setting in study.settings():
        done = study.runs_of(setting)
        every = study.runs_of(setting, None)
        mean, std = {}, {}
        for m in metrics:
            values = [r.metrics[m] for r in done if m in r.metrics and math.isfinite(r.metrics[m])]
            if values:
                mean[m] = statistics.fmean(values)
                std[m] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(SettingRow(setting, len(done), sum(r.status in ("failed", "killed", "interrupted") for r in every),
                              sum(r.status == "running" for r in every), mean, std))
    return out


def sensitivity_records(study: Study, rows: Sequence[SettingRow]) -> list[dict[str, Any]]:
    """``sensitivity.csv``: settings, counts, ``<metric>_mean`` and ``<metric>_std``."""
    metrics = study.metrics()
    out = []
    for row in rows:
        rec: dict[str, Any] = dict(zip(study.setting_keys, row.setting))
        rec.update(n=row.n, failed=row.failed, running=row.running)
        for m in metrics:
            rec[f"{m}_mean"], rec[f"{m}_std"] = row.mean.get(m), row.std.get(m)
        out.append(rec)
    return out


def best_rows(rows: Sequence[SettingRow], metric: str) -> set[int]:
    """Indices of the rows with the best mean of ``metric``."""
    values = [(i, r.mean[metric]) for i, r in enumerate(rows) if metric in r.mean]
    if not values:
        return set()
    best = (min if lower_is_better(metric) else max)(v for _, v in values)
    return {i for i, v in values if v == best}


def _cell(row: SettingRow, metric: str, digits: int = 3) -> str:
    if metric not in row.mean:
        return "–"
    return f"{row.mean[metric]:.{digits}f} ± {row.std[metric]:.{digits}f}"


def _digits(metric: str) -> int:
    return 1 if "percentile" in metric else 3


def sensitivity_markdown(study: Study, rows: Sequence[SettingRow], metrics: Sequence[str]) -> str:
    """A markdown table: settings, n, failed, then mean ± std over seeds per metric (best in bold)."""
    arrows = {m: "↓" if lower_is_better(m) else "↑" for m in metrics}
    head = [*(study.setting_keys or ["setting"]), "n", "failed", *(f"{m} {arrows[m]}" for m in metrics)]
    best = {m: best_rows(rows, m) for m in metrics}
    body = []
    for i, row in enumerate(rows):
        cells = [f"`{v}`" for v in row.setting] or ["all runs"]
        cells += [str(row.n), str(row.failed) + (f" (+{row.running} running)" if row.running else "")]
        for m in metrics:
            text = _cell(row, m, _digits(m))
            cells.append(f"**{text}**" if i in best[m] and len(rows) > 1 else text)
        body.append(cells)
    return markdown_table(head, body)


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table of ``rows`` (cells as text) under ``head``."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def latex_table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, caption: str = "",
                escape: bool = True) -> str:
    """The same for a paper (booktabs): ``left`` left-aligned columns, then right-aligned ones; cells are
    escaped for LaTeX unless ``escape`` is false (already LaTeX)."""
    tex = _tex if escape else (lambda text: text)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{" + "l" * left + "r" * (len(head) - left) + "}",
             r"\toprule", " & ".join(_tex(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join(tex(c) for c in cells) + r" \\" for cells in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + _tex(caption) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("{", r"\{"), ("}", r"\}"), ("$", r"\$"), ("±", r"$\pm$"), ("↑", r"$\uparrow$"),
                 ("↓", r"$\downarrow$"), ("≥", r"$\geq$"), ("≈", r"$\approx$"), ("–", "--")):
        text = text.replace(a, b)
    return text


def sensitivity_latex(study: Study, rows: Sequence[SettingRow], metrics: Sequence[str], caption: str = "") -> str:
    """The same table for a paper (booktabs), best values in bold."""
    head = [*(study.setting_keys or ["setting"]), "n", *(f"{m} {'↓' if lower_is_better(m) else '↑'}" for m in metrics)]
    best = {m: best_rows(rows, m) for m in metrics}
    body = []
    for i, row in enumerate(rows):
        cells = [_tex(v) for v in row.setting] or ["all runs"]
        cells.append(str(row.n))
        for m in metrics:
            text = _tex(_cell(row, m, _digits(m)))
            cells.append(r"\textbf{" + text + "}" if i in best[m] and len(rows) > 1 else text)
        body.append(cells)
    return latex_table(head, body, left=len(study.setting_keys) or 1, caption=caption, escape=False)


def select_setting(study: Study, rows: Sequence[SettingRow], metric: str, direction: str = "maximize",
                   require_top1: bool = True) -> SettingRow | None:
    """The setting with the best mean ``metric``; with ``require_top1`` only settings whose every run has
    every prototype top-1 (``all_top1`` = 1) and no failed run compete."""
    pool = [r for r in rows if metric in r.mean and r.n > 0
            and (not require_top1 or (r.mean.get("all_top1") == 1.0 and r.failed == 0))]
    if not pool:
        return None
    pick = max if direction == "maximize" else min
    return pick(pool, key=lambda r: r.mean[metric])
