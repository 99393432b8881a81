"""The audit's patch tasks (``task=patches``, ``task=candidates``): patch prototypes and shortcut candidates.

``patches``     one patch per (class, seed) of ``patches.classes`` x ``patches.seeds``
                (:func:`protoscope.audit.patches.optimise_patches`; its rows split over ``devices=``,
                :mod:`protoscope.audit.devices`) on the neutral carriers (equidistant and
                uniform), and each patch's gain pasted on them at ``per_side``² evenly spread positions
                (``held_out``: optimised on every other neutral carrier, gains on the rest).
                Writes ``patches.pt`` (reused when its settings match: resume), ``patches.png`` and the
                ``patch_gains`` table; with ``mark=``, each patch's ``mark_match`` and ``mark_rank`` in it
                (how much the patch, made without the mark, shows it).
``candidates``  each class's best patch (highest log-prob gain) pasted on the carriers of all other classes
                (neutral carriers count as the model's top-1 class on them, the run's prototypes as their
                own): the ``candidates`` table ranks patches by flip rate
                (:func:`protoscope.audit.candidates.shortcut_candidates`). Uses ``patches.pt`` or makes it.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from ..io import write_png, write_torch
from .devices import optimise_on_devices
from .patches import PatchResult, PatchSettings, appearance, patch_gains, patch_grid
from .tasks import NEUTRAL, TaskResult

if TYPE_CHECKING:
    from .tasks import AuditContext

log = logging.getLogger("protoscope")
SETTING_KEYS = tuple(vars(PatchSettings()))
# a mark score per patch -> its rank column and the summary keys of its top patch (class, score)
MARK_SCORES = {"mark_match": ("mark_rank", "patches/mark_top_class_index", "patches/mark_top_match"),
               "mark_path": ("mark_path_rank", "patches/mark_path_top_class_index", "patches/mark_path_top")}


def patch_settings(ctx: "AuditContext") -> PatchSettings:
    """``patches`` of conf/audit.yaml as :class:`PatchSettings` (checked against the model)."""
    node = OmegaConf.to_container(ctx.node("patches"), resolve=True)
    values = {k: node[k] for k in SETTING_KEYS if k in node}
    if "region" in values:
        values["region"] = tuple(float(v) for v in values["region"])
    settings = PatchSettings(**values)
    settings.check(ctx.classifier.input_size)
    return settings


def patch_rows(ctx: "AuditContext") -> tuple[list[int], list[int]]:
    """(class, seed) per row: ``patches.classes`` (default: the run's classes, else every class) x seeds."""
    classes = ctx.class_list("patches.classes")
    if not classes:
        classes = list(dict.fromkeys(int(c) for c in ctx.run.class_ids)) if ctx.run is not None \
            else list(range(ctx.classifier.num_classes))
    seeds = [int(s) for s in (ctx.node("patches").get("seeds") or [0])]
    return [c for c in classes for _ in seeds], [s for _ in classes for s in seeds]


def neutral_split(ctx: "AuditContext") -> tuple[torch.Tensor, torch.Tensor]:
    """(carriers the patches are optimised on, carriers their gains are measured on)."""
    neutral = ctx.carrier_subset(NEUTRAL).images
    if not ctx.node("patches").get("held_out", True) or len(neutral) < 2:
        return neutral, neutral
    return neutral[0::2], neutral[1::2]


def patch_result(ctx: "AuditContext") -> PatchResult:
    """The optimised patches (once per audit), from ``patches.pt`` when it holds these settings, rows and carriers."""
    if "patches" not in ctx.memo:
        ctx.memo["patches"] = _load_or_optimise(ctx)
    return ctx.memo["patches"]


def _load_or_optimise(ctx: "AuditContext") -> PatchResult:
    settings = patch_settings(ctx)
    classes, seeds = patch_rows(ctx)
    key = json.dumps({"carriers": ctx.carriers_key, "held_out": bool(ctx.node("patches").get("held_out", True)),
                      "classes": classes, "seeds": seeds,
                      "settings": PatchResult(torch.empty(0), [], [], settings).to_state()["settings"]},
                     sort_keys=True, default=str)
    path = ctx.out_dir / "patches.pt"
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("key") == key:
            log.info("patches: reusing %s", path)
            return PatchResult(state["patches"].float(), classes, seeds, settings)
    result = optimise_on_devices(ctx.classifier, neutral_split(ctx)[0], classes, settings, seeds, ctx.devices,
                                 ctx.out_dir, key)
    write_torch(path, {**result.to_state(), "key": key})
    return result


def gains_of(ctx: "AuditContext") -> list[dict[str, Any]]:
    """Each patch of :func:`patch_result`'s gains on the held-out neutral carriers (computed once per audit:
    ``candidates`` reuses those of ``patches``)."""
    if "patch_gains" not in ctx.memo:
        result = patch_result(ctx)
        per_side = int(ctx.node("patches").get("per_side", 3))
        rows = patch_gains(ctx.classifier, result.patches, result.classes, neutral_split(ctx)[1], per_side,
                           result.settings.paste_opacity)
        for row, seed in zip(rows, result.seeds):
            row["seed"] = seed
        ctx.memo["patch_gains"] = rows
    return [dict(row) for row in ctx.memo["patch_gains"]]


def mark_matches(ctx: "AuditContext", result: PatchResult, looks: torch.Tensor,
                 rows: list[dict[str, Any]]) -> dict[str, float]:
    """With ``mark=``, two scores per patch of how much it shows the mark, each with its rank among the patches
    and the class of the top patch in the summary: ``mark_match``, the mark's detector on the patch pasted on
    grey (:meth:`~protoscope.shortcuts.marks.MarkKind.match_patches`, ``detection.pad``: does it look like the
    mark?), and ``mark_path``, the agreement of the activation-path changes that the patch and the mark cause on
    the held-out carriers (:func:`~protoscope.audit.path_agreement.path_agreement`: does the model read it as
    the mark?)."""
    if ctx.mark is None:
        return {}
    from .path_agreement import path_agreement

    scores = {"mark_match": ctx.mark.match_patches(looks, pad=int(ctx.node("detection").get("pad", 4))),
              "mark_path": path_agreement(ctx.classifier, result.patches, neutral_split(ctx)[1], ctx.mark,
                                          int(ctx.node("patches").get("per_side", 3)), result.settings.paste_opacity)}
    summary = {}
    for column, values in scores.items():
        values = values.double().tolist()
        for row in rows:
            row[column] = values[row["row"]]
        ordered = sorted(rows, key=lambda r: (-round(r[column], 6), r["row"]))
        rank_column, top_class, top_score = MARK_SCORES[column]
        for rank, row in enumerate(ordered, 1):
            row[rank_column] = rank
        summary.update({top_class: float(ordered[0]["class_index"]), top_score: ordered[0][column]})
    return summary


def patches_task(ctx: "AuditContext") -> TaskResult:
    result = patch_result(ctx)
    rows = gains_of(ctx)
    ranked = sorted(rows, key=lambda r: (-r["logprob_gain"], r["row"]))
    for rank, row in enumerate(ranked, 1):
        row["rank"] = rank
    looks = appearance(result.patches, ctx.classifier.channels)
    matched = mark_matches(ctx, result, looks, ranked)
    figure = write_png(ctx.out_dir / "patches.png",
                       patch_grid(looks, columns=int(ctx.node("patches").get("columns", 8))))
    best = ranked[0]
    train, held = neutral_split(ctx)
    return TaskResult(tables={"patch_gains": ranked}, figures={"patches": figure},
                      summary={"patches/train_carriers": float(len(train)), "patches/gain_carriers": float(len(held)),
                               "patches/top_class_index": float(best["class_index"]),
                               "patches/top_logprob_gain": best["logprob_gain"],
                               "patches/rows": float(len(rows)), **matched})


def candidates_task(ctx: "AuditContext") -> TaskResult:
    from .candidates import best_rows, shortcut_candidates
    from .patches import carrier_logits

    result = patch_result(ctx)
    best = best_rows(result.classes, [r["logprob_gain"] for r in gains_of(ctx)])
    pool = ctx.carrier_subset(exclude=("photo",))
    top1 = carrier_logits(ctx.classifier, pool.images).argmax(-1).tolist()
    own = [c if c >= 0 else t for c, t in zip(pool.classes, top1)]
    opts = ctx.node("candidates")
    records = shortcut_candidates(ctx.classifier, result.patches[best], [result.classes[i] for i in best],
                                  pool.images, own, int(opts.get("per_side", 3)),
                                  result.settings.paste_opacity,
                                  float(opts.get("threshold", 2.0)), float(opts.get("min_spread", 0.05)))
    summary = {"candidates/count": float(sum(r["candidate"] for r in records))}
    if records:
        summary.update({"candidates/top_class_index": float(records[0]["class_index"]),
                        "candidates/top_flip_rate": records[0]["flip_rate"]})
    return TaskResult(tables={"candidates": records}, summary=summary)
