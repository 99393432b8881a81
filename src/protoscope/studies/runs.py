"""Reading run folders: records, overrides and per-run metrics recomputed from the run's own files.

A run folder is what ``protoscope-generate`` writes (``run.json``, ``metrics.json``, ``prototypes.pt``,
and ``evaluation/`` when path similarity was measured, by the run or later by ``protoscope-evaluate``).
Sweeps are folders of such runs (Hydra multirun: one sub-folder per job).
"""

from __future__ import annotations

import csv
import json
import math
import pickle
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from omegaconf import OmegaConf

from ..records import RECORD_FILE, read_record
from ..regularizers import roughness

EVALUATION_CSV = Path("evaluation") / "path_similarity.csv"
_ID_COLUMNS = {"class_index", "class_name", "seed", "seed_index", "source", "file", "top_class", "target",
               "target_kind", "target_index"}


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def generation_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The run's ``metrics.json`` (one dict per prototype), or [] when it has none yet."""
    try:
        rows = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return []
    return rows if isinstance(rows, list) else []


def evaluation_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The prototype rows of ``evaluation/path_similarity.csv`` (baseline sources left out), or []."""
    path = run_dir / EVALUATION_CSV
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    sources = [r.get("source") for r in rows]
    main = "prototype" if "prototype" in sources else (sources[0] if sources else None)
    return [r for r in rows if r.get("source") == main]


def evaluation_columns(run_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """Summary columns of an evaluation: ``<measure>/...`` without the per-layer ones."""
    layers: set[str] = set()
    meta = run_dir / "evaluation" / "path_similarity.json"
    try:
        layers = set(json.loads(meta.read_text()).get("layers", []))
    except (OSError, ValueError):
        pass
    if not rows:
        return []
    return [c for c in rows[0] if "/" in c and c not in _ID_COLUMNS and c.split("/", 1)[1] not in layers]


def saved_images(run_dir: Path) -> torch.Tensor | None:
    """The run's ``prototypes.pt`` images, or None when it has none (yet) or they cannot be read."""
    try:
        images = torch.load(run_dir / "prototypes.pt", map_location="cpu", weights_only=True)["images"]
    except (OSError, RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError):
        return None
    return images if isinstance(images, torch.Tensor) and images.dim() == 4 else None


def sharpness(images: torch.Tensor) -> float:
    """Mean absolute difference of neighbouring pixels of ``images`` [R,C,H,W] (the mean of both directions)."""
    return float(roughness(images.float(), 1).mean() / 2)


def run_metrics(run_dir: str | Path) -> dict[str, float]:
    """Means over a run's prototypes, recomputed from its files.

    ``target_prob``, ``target_logit``, ``top1`` (share that are top-1) and ``all_top1`` (1 if every
    prototype is top-1) from ``metrics.json`` (``target_activation`` for feature targets); ``sharpness`` (mean
    absolute difference of neighbouring pixels: L_hf's R_1 halved) from ``prototypes.pt``; every summary column
    of ``evaluation/`` (e.g.
    ``spearman/mean``, ``spearman/percentile``, ``l1/mean``) when path similarity was measured.
    """
    run_dir = Path(run_dir)
    out: dict[str, float] = {}
    gen = generation_rows(run_dir)
    if gen:
        out["n_prototypes"] = float(len(gen))
        for key in ("target_prob", "target_logit", "target_activation"):
            values = [v for r in gen if (v := _number(r.get(key))) is not None]
            if values:
                out[key] = statistics.fmean(values)
        ranks = [int(r["target_rank"]) for r in gen if "target_rank" in r]
        if ranks:
            out["top1"] = sum(r == 1 for r in ranks) / len(ranks)
            out["all_top1"] = float(all(r == 1 for r in ranks))
    images = saved_images(run_dir)
    if images is not None:
        out["sharpness"] = sharpness(images)
    ev = evaluation_rows(run_dir)
    for col in evaluation_columns(run_dir, ev):
        values = [v for r in ev if (v := _number(r.get(col))) is not None]
        if values:
            out[col] = statistics.fmean(values)
    return out


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """``["optimizer.lr=0.01", "+study=lr"]`` -> ``{"optimizer.lr": "0.01", "study": "lr"}``."""
    out = {}
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


@dataclass
class RunInfo:
    """One run folder as a report sees it."""

    dir: Path
    status: str
    overrides: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        return self.record.get("error")

    @property
    def job_num(self) -> int | None:
        num = (self.record.get("job") or {}).get("num")
        if num is None and self.dir.name.isdigit():
            return int(self.dir.name)
        return num

    @property
    def tag(self) -> str | None:
        return self.record.get("tag")


def is_run_dir(path: Path) -> bool:
    return (path / RECORD_FILE).is_file() or (path / "metrics.json").is_file() or (path / ".hydra").is_dir()


def _evaluation(path: Path) -> bool:
    """A protoscope-evaluate output folder (e.g. ``<run>/evaluation``): part of a run, never a run of a study."""
    return (read_record(path) or {}).get("task") == "evaluate"


def find_run_dirs(root: str | Path, depth: int = 3) -> list[Path]:
    """``root`` if it is a run folder, else the run folders below it (sweep job folders), sorted."""
    root = Path(root)
    subs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "report")) and not _evaluation(p)]
    if is_run_dir(root) and not any(is_run_dir(p) for p in subs):
        return [root]
    found: list[Path] = []
    if depth > 0:
        for sub in sorted(subs):
            found.extend(find_run_dirs(sub, depth - 1) if not is_run_dir(sub) else [sub])
    return sorted(found, key=lambda p: (str(p.parent), int(p.name) if p.name.isdigit() else 1 << 30, p.name))


def load_run(run_dir: str | Path) -> RunInfo:
    """A run folder's status, overrides and metrics (``run.json``; older folders from ``.hydra/``)."""
    run_dir = Path(run_dir)
    record = read_record(run_dir) or {}
    overrides = record.get("overrides")
    if overrides is None:
        hydra_overrides = run_dir / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(hydra_overrides)) if hydra_overrides.is_file() else []
    status = record.get("status") or ("completed" if (run_dir / "metrics.json").is_file() else "unknown")
    metrics = run_metrics(run_dir) if status == "completed" else {}
    return RunInfo(run_dir, status, parse_overrides(overrides), metrics, record)
