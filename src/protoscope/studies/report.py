"""The ``protoscope-report`` task: a sweep's (or study's) runs -> tables, plots, a grid and report.md."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..generation.export import save_figure
from ..hydra_utils import build_loggers, finish_loggers
from ..io import write_csv, write_json, write_text
from .collect import DEFAULT_METRICS, Study, collect, lower_is_better
from .figures import prototype_grid, write_sensitivity_figures
from .tables import (SettingRow, runs_table, select_setting, sensitivity_latex, sensitivity_markdown,
                     sensitivity_records, sensitivity_rows)

log = logging.getLogger("protoscope")


@dataclass
class Report:
    out_dir: Path
    study: Study
    rows: list[SettingRow]
    files: dict[str, Path]
    selected: SettingRow | None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    return list(value) if isinstance(value, (list, tuple)) else [value]


def shown_metrics(study: Study, wanted: Sequence[str] | None) -> list[str]:
    present = study.metrics()
    if wanted:
        missing = [m for m in wanted if m not in present]
        if missing and present:
            log.warning("report: no run has %s (available: %s)", ", ".join(missing), ", ".join(present))
        return [m for m in wanted if m in present]
    return [m for m in present if m in DEFAULT_METRICS] or present[:6]


def _status_counts(study: Study) -> str:
    counts: dict[str, int] = {}
    for r in study.runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def _code_versions(study: Study) -> str:
    """The git commits the runs were made with (``+changes`` when the checkout had local changes)."""
    seen: dict[str, int] = {}
    for r in study.runs:
        git = (r.record.get("code") or {}).get("git") or {}
        key = f"{str(git.get('commit', 'unknown'))[:7]}{'+changes' if git.get('dirty') else ''}" if git else "unknown"
        seen[key] = seen.get(key, 0) + 1
    return ", ".join(f"`{k}` ({n} runs)" for k, n in seen.items())


def report_markdown(study: Study, rows: Sequence[SettingRow], metrics: Sequence[str], files: dict[str, Path],
                    out_dir: Path, selected: SettingRow | None, select: dict[str, Any]) -> str:
    """``report.md``: what was swept, the sensitivity table, the selection, failures and figures."""
    rel = lambda p: str(Path(p).relative_to(out_dir))  # noqa: E731
    lines = [f"# Report: {study.sweep_name()}", "",
             f"Sweep folders: {', '.join(f'`{r}`' for r in study.roots)}  ",
             f"Runs: {len(study.runs)} ({_status_counts(study)})  ",
             f"Swept: {', '.join(f'`{k}`' for k in study.swept) or 'nothing'}"
             f"{' (seed keys: ' + ', '.join(study.seed_keys) + ')' if study.seed_keys else ''}  ",
             f"Fixed overrides: {' '.join(f'`{k}={v}`' for k, v in study.fixed.items()) or 'none'}  ",
             f"Code: {_code_versions(study)}", "",
             "## Sensitivity", "",
             f"Mean ± std over the completed runs of each setting (n: runs, i.e. seeds; failed: failed, killed or "
             f"interrupted runs). Per run, each metric is the mean over its prototypes. "
             f"{', '.join(f'{m} ' + ('↓' if lower_is_better(m) else '↑') for m in metrics)}; best in bold.", "",
             sensitivity_markdown(study, rows, metrics)]
    if select.get("metric"):
        lines += ["## Selection", ""]
        rule = (f"best mean `{select['metric']}` ({select.get('direction', 'maximize')})"
                + (" among settings whose every run has every prototype top-1 and no failed run"
                   if select.get("require_top1", True) else ""))
        if selected is None:
            lines += [f"No setting qualifies for the rule: {rule}.", ""]
        else:
            overrides = " ".join(f"{k}={v}" for k, v in zip(study.setting_keys, selected.setting))
            lines += [f"Rule: {rule}.", "", f"Selected: `{overrides or 'all runs'}` "
                      f"({select['metric']} = {selected.mean[select['metric']]:.4g} ± "
                      f"{selected.std[select['metric']]:.2g}, n = {selected.n}).", ""]
    bad = [r for r in study.runs if r.status not in ("completed",)]
    if bad:
        lines += ["## Runs not completed", "", "| run | status | settings | error |", "|---|---|---|---|"]
        for r in bad:
            setting = ", ".join(f"{k}={study.value(r, k)}" for k in study.swept)
            lines.append(f"| `{r.dir.name}` | {r.status} | {setting} | {(r.error or '').replace('|', '/')} |")
        lines.append("")
    figures = [p for k, p in files.items() if k.startswith("plot:")]
    if "grid" in files:
        lines += ["## Prototypes across settings", "", f"![prototypes]({rel(files['grid'])})", ""]
    if figures:
        lines += ["## Sensitivity plots", ""] + [f"![{p.stem}]({rel(p)})" for p in figures] + [""]
    lines += ["## Files", "", "`runs.csv` (one row per run), `sensitivity.csv|md|tex` (one row per setting), "
              "`plots/<key>__<metric>.png`, `prototypes_by_setting.png`.", ""]
    return "\n".join(lines)


def _log_to_wandb(cfg: DictConfig, study: Study, files: dict[str, Path], runs: list[dict], sens: list[dict]) -> None:
    loggers = build_loggers(cfg.get("logger"), wandb={"group": study.sweep_name(), "name": "report",
                                                     "tags": ["report"]})
    try:
        for lg in loggers:
            if type(lg).__name__ != "WandbLogger":
                continue
            for key, rows in (("report/runs", runs), ("report/sensitivity", sens)):
                if rows:
                    columns = list(rows[0])
                    lg.log_table(key=key, columns=columns, data=[[r.get(c) for c in columns] for r in rows])
            for name, path in files.items():
                if path.suffix == ".png":
                    lg.log_image(key=f"report/{name.replace(':', '/')}", images=[str(path)])
    finally:
        finish_loggers(loggers)


def run_report(cfg: DictConfig) -> Report:
    """Write ``runs.csv``, ``sensitivity.{csv,md,tex}``, plots, the prototype grid and ``report.md``."""
    roots = _as_list(cfg.get("sweep_dir"))
    if not roots:
        raise ConfigError("set sweep_dir=<multirun folder> (or a list of folders: sweep_dir='[a,b]')")
    study = collect(roots, [str(k) for k in _as_list(cfg.get("seed_keys"))] or ["seed"])
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else Path(roots[0]).expanduser() / "report"
    metrics = shown_metrics(study, [str(m) for m in _as_list(cfg.get("metrics"))])
    rows = sensitivity_rows(study)
    runs = runs_table(study)
    sens = sensitivity_records(study, rows)
    files: dict[str, Path] = {
        "runs": write_csv(out_dir / "runs.csv", runs),
        "sensitivity_csv": write_csv(out_dir / "sensitivity.csv", sens) if sens else out_dir / "sensitivity.csv",
        "sensitivity_md": write_text(out_dir / "sensitivity.md", sensitivity_markdown(study, rows, metrics)),
        "sensitivity_tex": write_text(out_dir / "sensitivity.tex", sensitivity_latex(
            study, rows, metrics, caption=f"Sensitivity of {study.sweep_name()}: mean ± std over seeds.")),
    }
    for path in write_sensitivity_figures(study, metrics, out_dir):
        files[f"plot:{path.stem}"] = path
    grid = prototype_grid(study, _as_list(cfg.get("classes")), int(cfg.get("max_grid_rows", 24)))
    if grid is not None:
        files["grid"] = out_dir / "prototypes_by_setting.png"
        save_figure(grid, files["grid"])
    select = OmegaConf.to_container(cfg.select) if cfg.get("select") else {}
    selected = None
    if select.get("metric"):
        selected = select_setting(study, rows, str(select["metric"]), str(select.get("direction", "maximize")),
                                  bool(select.get("require_top1", True)))
        files["selection"] = write_json(out_dir / "selection.json", {
            "rule": select, "setting": dict(zip(study.setting_keys, selected.setting)) if selected else None,
            "overrides": [f"{k}={v}" for k, v in zip(study.setting_keys, selected.setting)] if selected else None,
            "mean": selected.mean if selected else None, "n": selected.n if selected else 0})
    files["report"] = write_text(out_dir / "report.md",
                                 report_markdown(study, rows, metrics, files, out_dir, selected, select))
    _log_to_wandb(cfg, study, files, runs, sens)
    log.info("report of %d runs (%s) in %s", len(study.runs), _status_counts(study), out_dir)
    return Report(out_dir, study, rows, files, selected)
