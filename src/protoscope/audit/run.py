"""The ``protoscope-audit`` job: from a composed config (conf/audit.yaml) to an audit folder.

Output (``outputs/audit/<time>/``): ``run.json`` (the record), ``config.yaml``, ``carriers.pt``, per task
``<table>.csv|md`` and figures (``screening.png``, ``entanglement.png``,
``patches.png``), ``patches.pt``, ``mark.png``, ``audit.json``
(every table) and ``summary.md``. A task's tables are written as it ends (``results/<task>.json``), so
an interrupted audit started again in the same folder (``hydra.run.dir=<folder>``) redoes only the rest;
a folder holding the completed audit of the same config is skipped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ..errors import ConfigError, RunInterrupted
from ..hydra_utils import logged_run, save_config
from ..io import write_json, write_png
from ..models import Classifier, load_model
from ..models.store import pin_models
from ..records import RunRecord, one_line, recipe_differences
from ..shortcuts.marks import MarkKind, make_mark
from .devices import audit_devices
from .tasks import TASKS, AuditContext, TaskResult, check_inputs, chosen_tasks
from .writers import log_results, write_summary, write_tables

log = logging.getLogger("protoscope")
RECIPE_KEYS = ("model", "mark", "run", "task", "seed", "carriers", "screening", "detection", "entanglement",
               "patches", "candidates")


@dataclass
class AuditOutput:
    out_dir: Path
    results: dict[str, TaskResult]
    skipped: bool = False


def audit_recipe(cfg: DictConfig) -> dict[str, Any]:
    out = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v := cfg.get(k)) else v
           for k in RECIPE_KEYS}
    if int((cfg.get("carriers") or {}).get("photos") or 0) > 0:
        out["reference"] = OmegaConf.to_container(cfg.reference, resolve=True) if cfg.get("reference") else None
    return out


def resolve_model(cfg: DictConfig) -> None:
    """``model: null`` becomes the model of ``run=`` (its config.yaml), so the record names it."""
    if cfg.get("model") is not None or not cfg.get("run"):
        return
    cfg_file = Path(str(cfg.run)).expanduser() / "config.yaml"
    run_cfg = OmegaConf.load(cfg_file) if cfg_file.is_file() else None
    if run_cfg is None or run_cfg.get("model") is None:
        raise ConfigError(f"{cfg.run} has no config.yaml with a model: give a protoscope-generate run folder or model=")
    with open_dict(cfg):
        cfg.model = run_cfg.model


def load_inputs(cfg: DictConfig) -> tuple[Classifier, MarkKind | None, Any | None]:
    """The model (``model=`` or the run's), the mark at its input size, and the run's prototypes."""
    from ..comparison.sides import run_side

    side = run_side(cfg.run, "run", cfg.model) if cfg.get("run") else None
    if side is not None:
        classifier = side.classifier
    elif cfg.get("model") is not None:
        classifier = load_model(cfg.model)
    else:
        raise ConfigError("set model=<name> (e.g. model=efficientnet_lite0) or run=<protoscope-generate run folder>")
    mark = make_mark(OmegaConf.to_container(cfg.mark, resolve=True), classifier.input_size, classifier.channels) \
        if cfg.get("mark") else None
    return classifier, mark, side


def run_audit(cfg: DictConfig) -> AuditOutput:
    """Run the chosen audit tasks and write, log and record their results."""
    out_dir = Path(str(cfg.paths.output_dir))
    check_inputs(cfg)  # a bad choice fails first
    resolve_model(cfg)
    pin_models(cfg, required=False)
    record = RunRecord(out_dir, "audit")
    recipe = audit_recipe(cfg)
    if record.status == "completed":
        diff = recipe_differences(record.data.get("recipe") or {}, recipe)
        if diff:
            raise ConfigError(f"{out_dir} holds a completed audit with another config ({'; '.join(diff[:4])}); "
                              "choose another folder (hydra.run.dir)")
        log.info("%s already holds this completed audit: skipped (delete its run.json to run it again)", out_dir)
        return AuditOutput(out_dir, {name: _load_result(out_dir, name) for name in record.data.get("tasks", [])},
                           skipped=True)
    if record.data.get("recipe") and recipe_differences(record.data["recipe"], recipe):
        for stale in (out_dir / "results").glob("*.json"):  # another config's partial results
            stale.unlink()
    if record.held_by_other_process():
        raise ConfigError(f"{out_dir} is in use by process {record.data['pid']}; wait for it or choose another folder")
    record.start(cfg, recipe)
    try:
        results = _audit(cfg, out_dir, record)
    except RunInterrupted as exc:
        record.end("interrupted", one_line(exc))
        raise RunInterrupted(exc.signum, exc.step, f"run the same command with hydra.run.dir={out_dir} to resume") from None
    except BaseException as exc:
        record.end("failed", one_line(exc))
        raise
    summary = {k: v for r in results.values() for k, v in r.summary.items()}
    record.end("completed", tasks=list(results), metrics=summary)
    return AuditOutput(out_dir, results)


def _load_result(out_dir: Path, name: str) -> TaskResult:
    data = json.loads((out_dir / "results" / f"{name}.json").read_text())
    return TaskResult(data["tables"], {k: Path(v) for k, v in data["figures"].items()}, data["summary"])


def _audit(cfg: DictConfig, out_dir: Path, record: RunRecord) -> dict[str, TaskResult]:
    classifier, mark, side = load_inputs(cfg)
    tasks = chosen_tasks(cfg.get("task"), mark is not None, side is not None)
    devices = audit_devices(cfg.get("accelerator", "auto"), cfg.get("devices", 1))
    classifier.to(devices[0])
    save_config(cfg, out_dir / "config.yaml")
    record.update(model={"name": classifier.name, "run": cfg.get("run")}, devices=[str(d) for d in devices])
    carriers_key = {k: v for k, v in audit_recipe(cfg).items() if k in ("model", "run", "seed", "carriers", "reference")}
    ctx = AuditContext(cfg, out_dir, classifier, mark, side, carriers_key, devices=devices)
    if mark is not None:
        write_png(out_dir / "mark.png", mark.picture())
    results: dict[str, TaskResult] = {}
    command = "protoscope-audit " + " ".join(record.data.get("overrides") or [])
    for task in tasks:
        done = out_dir / "results" / f"{task.name}.json"
        if done.is_file():
            log.info("%s: done in an earlier attempt (%s)", task.name, done)
            results[task.name] = _load_result(out_dir, task.name)
            continue
        log.info("audit task %s: %s", task.name, task.doc)
        result = TASKS[task.name].run(ctx)
        result.figures.update(write_tables(out_dir, result.tables, command))
        write_json(done, {"tables": result.tables, "figures": {k: str(v) for k, v in result.figures.items()},
                          "summary": result.summary})
        results[task.name] = result
    write_summary(out_dir, results, command, classifier.name)
    with logged_run(cfg.get("logger"), cfg) as loggers:
        log_results(loggers, results)
    return results
