"""The audit's tasks: each reads an :class:`AuditContext` and returns tables, figures and summary numbers.

``TASKS`` maps a name (``task=`` in conf/audit.yaml) to an :class:`AuditTask`; a new mode (e.g. patch
prototypes, :mod:`.patch_tasks`) is one more entry, ``TASKS["patches"] = AuditTask("patches", (), patches_task,
in_auto=False)``, whose function reads its node of conf/audit.yaml (``ctx.node("patches")``), ``ctx.carriers``
and ``ctx.classifier`` and returns a :class:`TaskResult`; the job writes, logs, records and resumes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..io import write_torch
from ..models import Classifier
from ..shortcuts.marks import MarkKind
from .carriers import Carriers, equidistant_baselines, photo_carriers, prototype_carriers, uniform_carriers
from .plots import entanglement_figure, screening_figure

log = logging.getLogger("protoscope")
NEUTRAL = ("equidistant", "uniform")


@dataclass
class TaskResult:
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)


@dataclass
class AuditContext:
    """What the tasks share: the config, the model, the mark, the run's prototypes and the carriers."""

    cfg: DictConfig
    out_dir: Path
    classifier: Classifier
    mark: MarkKind | None
    run: Any | None  # protoscope.comparison.Side of run=, or None
    carriers_key: dict[str, Any]
    memo: dict[str, Any] = field(default_factory=dict)  # results one task computes and a later one reuses
    devices: list[torch.device] = field(default_factory=lambda: [torch.device("cpu")])  # task=patches splits over them

    def node(self, key: str) -> DictConfig:
        return self.cfg.get(key) or OmegaConf.create({})

    @cached_property
    def carriers(self) -> Carriers:
        """Every carrier group configured (photos included), cached in ``carriers.pt`` for resumes."""
        path = self.out_dir / "carriers.pt"
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("key") == self.carriers_key:
                log.info("carriers: reusing %s", path)
                return Carriers.from_state(state)
        spec = self.node("carriers")
        eq = spec.get("equidistant") or {}
        parts = [equidistant_baselines(self.classifier, int(eq.get("seeds", 0)), int(eq.get("steps", 100)),
                                       float(eq.get("lr", 0.05)), str(eq.get("param", "fourier")),
                                       int(self.cfg.get("seed", 0)))]
        uniform = spec.get("uniform") or {}
        parts.append(uniform_carriers(self.classifier, list(uniform.get("levels") or []), int(uniform.get("colours", 0)),
                                      int(self.cfg.get("seed", 0))))
        if self.run is not None and spec.get("prototypes", True):
            parts.append(prototype_carriers(self.run.images, self.run.class_ids, self.run.source))
        if int(spec.get("photos") or 0) > 0:
            parts.append(photo_carriers(self.cfg.reference, self.classifier, int(spec.photos)))
        carriers = Carriers.join(parts)
        write_torch(path, {**carriers.state(), "key": self.carriers_key})
        log.info("carriers: %s", carriers.counts())
        return carriers

    def carrier_subset(self, groups: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()) -> Carriers:
        c = self.carriers
        keep = [i for i, g in enumerate(c.groups) if (groups is None or g in groups) and g not in exclude]
        return Carriers(c.images[keep], [c.groups[i] for i in keep], [c.classes[i] for i in keep], c.info)

    def class_list(self, key: str) -> list[int]:
        from ..generation.rows import resolve_class

        values = OmegaConf.select(self.cfg, key) or []
        return [resolve_class(v, self.classifier.class_names) for v in values]


@dataclass
class AuditTask:
    name: str
    needs: tuple[str, ...]  # "mark" and/or "run"
    run: Callable[[AuditContext], TaskResult]
    doc: str = ""
    in_auto: bool = True  # run by task=auto when its inputs are given (false: only when named, e.g. slow tasks)


def screening_task(ctx: AuditContext) -> TaskResult:
    from .screening import rank_table, screen

    opts = ctx.node("screening")
    kwargs = dict(seed=int(ctx.cfg.get("seed", 0)), batch_size=int(ctx.cfg.get("batch_size", 64)),
                  rank_by=str(opts.get("rank_by", "logit")), decimals=int(opts.get("decimals", 4)),
                  top_k=int(opts.get("top_k", 10)))
    data_free = screen(ctx.classifier, ctx.mark, ctx.carrier_subset(exclude=("photo",)), **kwargs)
    if ctx.mark.template() is None and set(data_free.carriers.groups) - {"prototype"}:
        log.warning("a global mark (%s) on synthetic carriers (%s) is noisy: it ranked a planted brightness class "
                    "first in 4 of 10 models, on the models' own prototypes alone in 10 of 10 (experiments/audit). "
                    "Screen on a run's prototypes: run=<generate run> carriers.equidistant.seeds=0 "
                    "'carriers.uniform.levels=[]' carriers.uniform.colours=0", ctx.mark.kind,
                    ", ".join(g for g in data_free.carriers.counts() if g != "prototype"))
    runs = [("carriers", data_free)]
    if "photo" in ctx.carriers.groups:  # the photo ranking is a comparison, never part of the data-free one
        runs.append(("photos", screen(ctx.classifier, ctx.mark, ctx.carrier_subset(("photo",)), **kwargs)))
    watch = ctx.class_list("screening.classes")
    top = [r["class_index"] for r in data_free.records[:int(opts.get("show", 20))]]
    shown = list(dict.fromkeys(watch + top))
    result = TaskResult(tables={"screening": data_free.records,
                                "screening_classes": rank_table(runs, shown, [ctx.classifier.class_names[c] for c in shown])})
    if len(runs) > 1:
        result.tables["screening_photos"] = runs[1][1].records
    result.figures["screening"] = screening_figure(data_free, ctx.out_dir / "screening.png", int(opts.get("show", 20)),
                                                   highlight=watch)
    result.summary = {"screening/top_class_index": float(data_free.records[0]["class_index"]),
                      "screening/top_logit_gain": data_free.records[0]["logit_gain"],
                      "screening/carriers": float(len(data_free.carriers))}
    for c in watch:
        result.summary[f"screening/rank_{c}"] = float(data_free.rank_of(c))
        if len(runs) > 1:
            result.summary[f"screening/photo_rank_{c}"] = float(runs[1][1].rank_of(c))
    return result


def detection_task(ctx: AuditContext) -> TaskResult:
    from .detection import detect_prototypes

    side = ctx.run
    rows, per_class = detect_prototypes(ctx.mark, side.images, side.class_ids, side.seeds,
                                        ctx.classifier.class_names, int(ctx.node("detection").get("pad", 4)))
    return TaskResult(tables={"detection": per_class, "detection_prototypes": rows},
                      summary={"detection/top_class_index": float(per_class[0]["class_index"]),
                               "detection/top_score": per_class[0]["detection"]})


def entanglement_task(ctx: AuditContext) -> TaskResult:
    from .entanglement import entanglement
    from .screening import logits_of

    opts = ctx.node("entanglement")
    batch = int(ctx.cfg.get("batch_size", 64))
    neutral = ctx.carrier_subset(NEUTRAL)
    ent = entanglement(logits_of(ctx.classifier, ctx.run.images, batch), ctx.run.class_ids,
                       logits_of(ctx.classifier, neutral.images, batch), ctx.classifier.class_names,
                       float(opts.get("threshold", 0.5)), int(ctx.node("screening").get("decimals", 4)))
    names = ctx.classifier.class_names
    matrix = [{"class_index": c, "class_name": names[c], **{names[k]: float(ent.square()[i, j])
                                                              for j, k in enumerate(ent.classes)}}
              for i, c in enumerate(ent.classes)]
    clusters = [{"cluster": n + 1, "classes": " + ".join(names[c] for c in group), "class_indices": list(group)}
                for n, group in enumerate(ent.clusters)]
    top = ent.pairs[:int(opts.get("top_pairs", 20))]
    fig = entanglement_figure(ent, ctx.out_dir / "entanglement.png")
    return TaskResult(tables={"entanglement_pairs": top, "entanglement_matrix": matrix,
                              "entanglement_clusters": clusters},
                      figures={"entanglement": fig},
                      summary={"entanglement/top_mutual": top[0]["mutual"] if top else 0.0,
                               "entanglement/clusters": float(len(clusters))})


def patches_task(ctx: AuditContext) -> TaskResult:
    from .patch_tasks import patches_task as run

    return run(ctx)


def candidates_task(ctx: AuditContext) -> TaskResult:
    from .patch_tasks import candidates_task as run

    return run(ctx)


TASKS: dict[str, AuditTask] = {
    "screening": AuditTask("screening", ("mark",), screening_task, "rank every class by the mark's gain on carriers"),
    "detection": AuditTask("detection", ("mark", "run"), detection_task, "score each prototype of run= for the mark"),
    "entanglement": AuditTask("entanglement", ("run",), entanglement_task,
                              "how much each class's prototypes raise the other classes"),
    "patches": AuditTask("patches", (), patches_task, "optimise a patch per class that raises it on the carriers",
                         in_auto=False),
    "candidates": AuditTask("candidates", (), candidates_task,
                            "rank each class's patch by how many other classes' carriers it flips", in_auto=False),
}


def chosen_tasks(task: Any, has_mark: bool, has_run: bool) -> list[AuditTask]:
    """The tasks of ``task=`` (a name, a list, or ``auto``: every task its inputs allow), checked."""
    have = {"mark": has_mark, "run": has_run}
    hints = {"mark": "mark=<kind> (e.g. mark=imagenet_w, mark=square)", "run": "run=<protoscope-generate run folder>"}
    if task in (None, "auto"):
        chosen = [t for t in TASKS.values() if t.in_auto and all(have[n] for n in t.needs)]
        if not chosen:
            raise ConfigError(f"nothing to audit: give {hints['mark']} and/or {hints['run']}")
        return chosen
    names = [task] if isinstance(task, str) else list(task)
    out = []
    for name in names:
        if name not in TASKS:
            raise ConfigError(f"task={name}: there is no audit task {name!r}; choose auto or from: {', '.join(TASKS)}")
        missing = [n for n in TASKS[name].needs if not have[n]]
        if missing:
            raise ConfigError(f"task {name} needs {' and '.join(hints[n] for n in missing)}")
        out.append(TASKS[name])
    return out


def check_inputs(cfg: DictConfig) -> list[AuditTask]:
    """The chosen tasks, with their inputs, the devices, and photos only with a reference (before anything loads)."""
    from .devices import audit_devices

    tasks = chosen_tasks(cfg.get("task"), bool(cfg.get("mark")), bool(cfg.get("run")))
    audit_devices(cfg.get("accelerator", "auto"), cfg.get("devices", 1))
    if int((cfg.get("carriers") or {}).get("photos") or 0) > 0 and not cfg.get("reference"):
        raise ConfigError("carriers.photos > 0 needs photos: add reference=<source> (e.g. reference=imagenette)")
    return tasks
