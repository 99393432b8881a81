#!/usr/bin/env python
"""Planted marks, audited one model at a time: does mark screening rank the planted class first?

For every seed and mark kind a Fashion-MNIST SmallCNN is trained with the mark planted on 90% of one
class's images (the models of experiments/shortcuts: same settings, same planted class (3 s + 1) mod 10);
then ``protoscope-audit`` screens all 10 classes with that model's saved ``mark.pt`` on data-free
carriers (equidistant baselines and grey; no clean model, no data, no prototypes needed), and again on the
model's own prototypes alone (``--prototype-carriers``, every mark by default). Then, without the
mark, ``protoscope-audit task=patches`` optimises one patch per class on the same neutral carriers with two
recipes (``RECIPES``): ``local``, a 12 px image patch at a random place each step (for marks that are small or
move), and ``overlay``, a whole-image overlay with a colour and an opacity per pixel (Neural Cleanse's trigger
search, for marks at a fixed place or as large as the image). Each class gets ``--patch-seeds`` patches (3: one
per patch seed, each from its own start and carriers); each patch, pasted on a grey image, is scored for the
mark by the mark's own detector (the position-free match) and by its activation-path agreement with the mark
(how the model reads it), and a class's score is its best patch's. The ROC AUC of the planted class's score
against the other classes' is per mark kind and recipe (the table also gives it for the mean of each class's
patches and for one patch). The recipes were chosen on seeds 0-3, the number of patches and the best-patch rule
(over the mean) on seeds 0-4; seeds 5-9 are held out. ``--control-marks`` scores the finished patches' path
agreement with every mark kind (``planted_control_marks.csv``): is the agreement about the planted mark?

    python experiments/audit/planted.py [--seeds 0 1 ... 9] [--marks square stripes random_square brightness]
    python experiments/audit/planted.py --control-marks --seeds 5 6 7 8 9

Writes ``planted.md`` / ``planted.csv`` next to this script (rows of marks and seeds not run this time are kept
from the CSVs already there; ``--tables-only`` rewrites planted.md from those CSVs and runs nothing); models
and audits go to ``outputs/audit/planted/{train,audit,generate,patches}/``.
Resumable: a trained model, a generation or a completed audit is skipped.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path
from typing import Any

from protoscope.cli import compose
from protoscope.io import write_csv, write_text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "shortcuts"))
from run import Settings, planted_class, run_name, train_step  # noqa: E402  (the shortcut benchmark's models)

from protoscope.studies.steps import run_steps  # noqa: E402

LOG = logging.getLogger("audit.planted")
MARKS = ("square", "stripes", "random_square", "brightness")


def audit_overrides(s: Settings, seed: int, mark: str, folder: str = "audit") -> list[str]:
    model = s.out / "train" / run_name(seed, mark)
    return ["model=fashion_cnn", f"model.checkpoint={model / 'model.pt'}", "mark=file",
            f"mark.path={model / 'mark.pt'}", f"screening.classes=[{planted_class(seed)}]", "logger=none",
            f"paths.output_dir={s.out / folder / run_name(seed, mark)}"]


def public(command: str) -> str:
    """A command with paths relative to the folder it was run from (no machine-specific folders in the tables)."""
    return command.replace(f"{Path.cwd()}/", "")


CHOSEN_ON = (0, 1, 2, 3, 4)  # seeds on which prototype carriers and patch recipes were chosen; the rest are held out


def seed_groups(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """``rows`` split into the chosen-on seeds ("0-4") and the held-out ones, leaving out an empty group."""
    groups = [("0-4", [r for r in rows if int(r["seed"]) in CHOSEN_ON]),
              ("held out", [r for r in rows if int(r["seed"]) not in CHOSEN_ON])]
    return [(label, rs) for label, rs in groups if rs]


RECIPES = {  # chosen on seeds 0-3 (best mean AUC over square and random_square; stripes for the overlay)
    "local": ["patches.size=12"],
    "overlay": ["patches.size=28", "patches.kind=overlay", "patches.colour=pixel", "patches.param=pixel",
                "patches.lr=0.1", "patches.mask_weight=1.0"],
}


def patch_folder(s: Settings, seed: int, mark: str, recipe: str, patches: int = 1) -> Path:
    """Where the patch audit of one model and recipe writes (``paths.output_dir``)."""
    return s.out / "patches" / (recipe if patches == 1 else f"{recipe}_{patches}seeds") / run_name(seed, mark)


def patch_overrides(s: Settings, seed: int, mark: str, steps: int, recipe: str, patches: int = 1) -> list[str]:
    model = s.out / "train" / run_name(seed, mark)
    return ["model=fashion_cnn", f"model.checkpoint={model / 'model.pt'}", "mark=file",
            f"mark.path={model / 'mark.pt'}", "task=patches", *RECIPES[recipe], f"patches.steps={steps}",
            f"patches.seeds=[{','.join(map(str, range(patches)))}]", "logger=none",
            f"paths.output_dir={patch_folder(s, seed, mark, recipe, patches)}"]


def patch_step(s: Settings, seed: int, mark: str, steps: int, recipe: str, patches: int = 1) -> list[dict]:
    """``patches`` patches per class (no mark used to make them), each scored for the mark by the audit (its
    ``mark_match``: the mark's detector on the patch pasted on grey): one record per patch."""
    from protoscope.audit.run import run_audit

    overrides = patch_overrides(s, seed, mark, steps, recipe, patches)
    rows = run_audit(compose("audit", overrides)).results["patches"].tables["patch_gains"]
    return [{"mark": mark, "seed": seed, "recipe": recipe, "class_index": int(r["class_index"]),
             "patch_seed": int(r["seed"]), "planted": int(r["class_index"]) == planted_class(seed),
             "detection": float(r["mark_match"]), "path": float(r["mark_path"]), "logprob_gain": r["logprob_gain"],
             "command": public("protoscope-audit " + " ".join(overrides))}
            for r in sorted(rows, key=lambda r: r["row"])]


def control_step(s: Settings, seed: int, mark: str, recipe: str, patches: int, command: str) -> list[dict]:
    """The patches of one finished patch audit scored for their path agreement with every mark kind of ``MARKS``
    (the conf/mark defaults; the model's own mark for its kind): does the planted class's patch agree with its
    own mark only, or with any mark? One record per (kind compared, class): the best patch's agreement."""
    import torch
    from omegaconf import OmegaConf

    from protoscope.audit.patch_tasks import neutral_split, patch_settings
    from protoscope.audit.path_agreement import agreement, mark_change, patch_changes
    from protoscope.audit.run import load_inputs
    from protoscope.audit.tasks import AuditContext
    from protoscope.shortcuts.marks import make_mark

    folder = patch_folder(s, seed, mark, recipe, patches)
    cfg = compose("audit", patch_overrides(s, seed, mark, 0, recipe, patches))  # the audit's settings (steps aside)
    classifier, own, _ = load_inputs(cfg)
    saved = torch.load(folder / "carriers.pt", map_location="cpu", weights_only=True)["key"]
    ctx = AuditContext(cfg, folder, classifier, own, None, saved)  # reuses the audit's carriers.pt
    held, opacity = neutral_split(ctx)[1], patch_settings(ctx).paste_opacity  # as the audit scored its patches
    state = torch.load(folder / "patches.pt", map_location="cpu", weights_only=True)
    changes = patch_changes(classifier, state["patches"].float(), held, 3, opacity)  # once, for every kind
    records = []
    for kind in MARKS:
        other = own if kind == mark else make_mark(OmegaConf.to_container(compose("audit", [f"mark={kind}"]).mark,
                                                                          resolve=True), classifier.input_size, 1)
        agrees = agreement(changes, mark_change(classifier, held, other))
        for c in range(classifier.num_classes):
            best = max(float(a) for a, k in zip(agrees, state["classes"]) if int(k) == c)
            records.append({"mark": mark, "seed": seed, "recipe": recipe, "compared_with": kind, "class_index": c,
                            "planted": c == planted_class(seed), "detection": best, "command": command})
    return records


def control_markdown(records: list[dict]) -> list[str]:
    """ROC AUC of the planted class's path agreement with each mark kind (its own and the others)."""
    if not records:
        return []
    lines = ["", "## Is the agreement about the planted mark? (path agreement with every mark kind)", "",
             "`python experiments/audit/planted.py --control-marks --seeds 5 6 7 8 9` (the patch audits above, "
             "nothing retrained): each model's patches scored against every kind's mark (its own planted mark for "
             "its own kind; the conf/mark default for the others). ROC AUC of the planted class against the others, seeds 5-9 (held "
             "out).", "", "| model's mark | recipe | " + " | ".join(f"vs {k}" for k in MARKS) + " |",
             "|---|---|" + "---|" * len(MARKS)]
    for mark in dict.fromkeys(r["mark"] for r in records):
        for recipe in RECIPES:
            cells = []
            for kind in MARKS:
                rs = [r for r in records if (r["mark"], r["recipe"], r["compared_with"]) == (mark, recipe, kind)
                      and int(r["seed"]) not in CHOSEN_ON]
                cells.append(f"{auc_summary(rs)[0]:.3f}" if rs else "-")
            lines.append(f"| {mark} | {recipe} | " + " | ".join(cells) + " |")
    return lines


PROTOTYPE_CARRIERS_ONLY = ["task=screening", "carriers.equidistant.seeds=0", "carriers.uniform.levels=[]",
                           "carriers.uniform.colours=0"]


def generate_step(s: Settings, seed: int, mark: str) -> Path:
    """The model's own prototypes (``protoscope-generate experiment=fashion``, no reference: no data)."""
    folder = s.out / "generate" / run_name(seed, mark)
    model = s.out / "train" / run_name(seed, mark) / "model.pt"
    run_steps({f"generate_{run_name(seed, mark)}": [
        "protoscope-generate", *s.generate, "classes=all", f"model.checkpoint={model}", "logger=none",
        "trainer.enable_progress_bar=false", f"hydra.run.dir={folder}"]}, logs=s.out / "logs")
    return folder


def prototype_screen_step(s: Settings, seed: int, mark: str) -> dict:
    """Screening with the model's prototypes as the only carriers: the planted class's ranks."""
    from protoscope.audit.run import run_audit

    run = generate_step(s, seed, mark)
    overrides = [*audit_overrides(s, seed, mark, "audit_prototypes"), f"run={run}", *PROTOTYPE_CARRIERS_ONLY]
    records = run_audit(compose("audit", overrides)).results["screening"].tables["screening"]
    mine = next(r for r in records if r["class_index"] == planted_class(seed))
    return {"prototype_rank": mine["rank"], "prototype_logprob_rank": mine["logprob_rank"],
            "prototype_command": public("protoscope-audit " + " ".join(overrides))}


def audit_step(s: Settings, seed: int, mark: str) -> dict:
    from protoscope.audit.run import run_audit

    out = run_audit(compose("audit", audit_overrides(s, seed, mark)))
    records = out.results["screening"].tables["screening"]
    target = planted_class(seed)
    mine = next(r for r in records if r["class_index"] == target)
    best_other = max(r["logit_gain"] for r in records if r["class_index"] != target)
    return {"mark": mark, "seed": seed, "planted_class": mine["class_name"], "planted_index": target,
            "rank": mine["rank"], "logprob_rank": mine["logprob_rank"], "logit_gain": mine["logit_gain"],
            "logit_gain_std": mine["logit_gain_std"], "best_other_logit_gain": best_other,
            "median_carrier_rank": mine["median_carrier_rank"], "top10_share": mine.get("top10_share"),
            "command": public("protoscope-audit " + " ".join(audit_overrides(s, seed, mark)))}


def class_scores(records: list[dict], rule: str = "max", patch_seeds: int | None = None,
                 score: str = "detection") -> list[dict]:
    """One record per (seed, class) whose ``detection`` is the ``mean`` or the ``max`` of its patches' ``score``
    (``detection`` or ``path``; its first ``patch_seeds`` patches, all if None)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if patch_seeds is None or int(r.get("patch_seed", 0)) < patch_seeds:
            groups.setdefault((int(r["seed"]), int(r["class_index"])), []).append(r)
    pick = max if rule == "max" else (lambda xs: sum(xs) / len(xs))
    return [{**rs[0], "detection": pick([float(r[score]) for r in rs])} for rs in groups.values()]


def model_interval(best: list[dict], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the pooled ROC AUC of ``best`` (one record per seed and class) over models: the
    seeds (one trained model each) drawn with replacement ``draws`` times (seeded: the same interval every run)."""
    import random

    from protoscope.metrics import roc_auc

    by_seed: dict[int, list[dict]] = {}
    for r in best:
        by_seed.setdefault(int(r["seed"]), []).append(r)
    seeds, rng, aucs = sorted(by_seed), random.Random(seed), []
    for _ in range(draws):
        rows = [r for sd in rng.choices(seeds, k=len(seeds)) for r in by_seed[sd]]
        labels = [bool(r["planted"]) for r in rows]
        if any(labels) and not all(labels):
            aucs.append(roc_auc([r["detection"] for r in rows], labels))
    aucs.sort()
    return aucs[int(0.025 * (len(aucs) - 1))], aucs[int(round(0.975 * (len(aucs) - 1)))]


def auc_summary(best: list[dict]) -> tuple[float, float, float, str, str, float, float]:
    """Of one record per (seed, class) (:func:`class_scores`): the ROC AUC of the planted class's ``detection``
    against the others', its interval over models, the seeds, how many models rank the planted class first, and
    the mean score of planted and other classes."""
    from protoscope.metrics import roc_auc

    auc = roc_auc([r["detection"] for r in best], [r["planted"] for r in best])
    seeds = sorted({int(r["seed"]) for r in best})
    first = sum(max((r for r in best if int(r["seed"]) == sd), key=lambda r: r["detection"])["planted"] for sd in seeds)
    pos = [r["detection"] for r in best if r["planted"]]
    neg = [r["detection"] for r in best if not r["planted"]]
    return (auc, *model_interval(best), " ".join(map(str, seeds)), f"{first}/{len(seeds)}", sum(pos) / len(pos),
            sum(neg) / len(neg))


def patch_markdown(records: list[dict], steps: int) -> list[str]:
    from protoscope.metrics import roc_auc

    patches = max(int(r.get("patch_seed", 0)) for r in records) + 1
    lines = ["", "## Patch prototypes (no mark used to make them)", "",
             f"`protoscope-audit task=patches` (all 10 classes, {patches} patches each: "
             f"`patches.seeds=[0..{patches - 1}]`, "
             f"{steps} steps) with each recipe: "
             + "; ".join(f"{name} `{' '.join(o)}`" for name, o in RECIPES.items()) + ". Each patch pasted on grey "
             "and scored by the mark's detector (a global mark's detector reads the patch itself: the shift that 90% "
             "of its pixels carry, chosen on seeds 0-4 over the mean shift, the median and the 25% quantile, mean AUC "
             "of both recipes 0.976 against 0.809 for the mean; added 2026-12-07); a class's score is its best "
             "patch's (selected on seeds 0-4: mean AUC over every mark and recipe 0.863, against 0.851 for the mean of "
             "its patches). AUC: the planted class's "
             "score against the other classes' (over the seeds in the row); mean of patches: with the mean instead; "
             "one patch: patch seed 0 alone. The recipes were chosen on seeds 0-3, the number of patches and the rule "
             "on seeds 0-4; "
             f"seeds {', '.join(str(x) for x in range(10) if x not in CHOSEN_ON)} are held out. 95% interval: "
             "the ROC AUC's bootstrap interval over the row's models (its seeds drawn with replacement, 2000 draws): "
             "how far another set of trained models could move it.", "",
             "| mark | recipe | seeds | ROC AUC | 95% interval over models | ROC AUC, mean of patches "
             "| ROC AUC, one patch | planted class ranked first (of 10) | mean detection: planted / others |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mark in dict.fromkeys(r["mark"] for r in records):
        for recipe in RECIPES:
            mine = [r for r in records if r["mark"] == mark and r["recipe"] == recipe]
            for label, rs in seed_groups(mine):
                auc, low, high, seeds, first, planted, others = auc_summary(class_scores(rs))
                mean, one = (roc_auc([r["detection"] for r in x], [r["planted"] for r in x])
                             for x in (class_scores(rs, "mean"), class_scores(rs, patch_seeds=1)))
                lines.append(f"| {mark} | {recipe} | {label}: {seeds} | {auc:.3f} | {low:.2f}-{high:.2f} | "
                             f"{mean:.3f} | {one:.3f} | {first} | {planted:.3f} / {others:.3f} |")
    return lines


def path_markdown(records: list[dict]) -> list[str]:
    """The patches scored by the model instead of by the mark's detector: activation-path agreement."""
    records = [r for r in records if r.get("path") not in (None, "")]
    if not records:
        return []
    lines = ["", "## The same patches, scored by how the model reads them (activation-path agreement)", "",
             "Each patch's `mark_path` from the same audits (`protoscope.audit.path_agreement`): pasted on the held-out "
             "neutral carriers, the patch changes every hidden layer's mean activation; so does the mark; the score is "
             "the mean over layers of the cosine of the two changes, after the direction of the mean change of the "
             "model's 30 patches is taken out of both. A class's score is its best patch's (the rule of the table "
             "above). Added 2026-12-07: how the common change is removed (its direction, the mean, or nothing) was "
             "chosen on seeds 0-3 here and seeds 0-1 of the ImageNet-W patches; seeds 5-9 are held out.", "",
             "| mark | recipe | seeds | ROC AUC, path agreement | 95% interval over models | planted class ranked first "
             "| mean agreement: planted / others |", "|---|---|---|---|---|---|---|"]
    for mark in dict.fromkeys(r["mark"] for r in records):
        for recipe in RECIPES:
            mine = [r for r in records if r["mark"] == mark and r["recipe"] == recipe]
            for label, rs in seed_groups(mine):
                auc, low, high, seeds, first, planted, others = auc_summary(class_scores(rs, score="path"))
                lines.append(f"| {mark} | {recipe} | {label}: {seeds} | {auc:.3f} | {low:.2f}-{high:.2f} | {first} | "
                             f"{planted:.3f} / {others:.3f} |")
    return lines


def patch_figure(s: Settings, records: list[dict], seed: int = 5, path: Path = HERE / "planted_patches.png") -> None:
    """One held-out model per mark and recipe (a row): the mark on grey, then each class's best patch (by
    ``mark_match``) as it looks on grey, titled with its ``mark_match`` / ``mark_path``; the planted class in red.
    Skipped (with a log line) where the patch audits are not in ``s.out``, e.g. ``--tables-only`` on a clone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from protoscope.audit.patches import appearance
    from protoscope.generation.export import save_figure
    from protoscope.models.class_names import FASHION_MNIST
    from protoscope.shortcuts.marks import load_mark

    rows = [(mark, recipe) for mark in MARKS for recipe in RECIPES]
    folders = {(m, r): patch_folder(s, seed, m, r, 3) for m, r in rows}
    if not all((f / "patches.pt").is_file() for f in folders.values()):
        LOG.info("no patch figure: the seed-%d patch audits are not in %s", seed, s.out)
        return
    fig, axes = plt.subplots(len(rows), 11, figsize=(13.2, 1.75 * len(rows)), squeeze=False)
    for (mark, recipe), line in zip(rows, axes):
        state = torch.load(folders[mark, recipe] / "patches.pt", map_location="cpu", weights_only=True)
        looks = appearance(state["patches"].float(), 1)
        own = load_mark(s.out / "train" / run_name(seed, mark) / "mark.pt", 28, 1)
        line[0].imshow(own.picture()[0].numpy(), cmap="gray", vmin=0, vmax=1)
        line[0].set_title(f"{mark}\n{recipe}", fontsize=8)
        for c in range(10):
            mine = [r for r in records if (r["mark"], int(r["seed"]), r["recipe"], int(r["class_index"])) ==
                    (mark, seed, recipe, c)]
            best = max(mine, key=lambda r: float(r["detection"]))
            row = next(i for i, (k, sd) in enumerate(zip(state["classes"], state["seeds"]))
                       if (int(k), int(sd)) == (c, int(best["patch_seed"])))
            ax = line[c + 1]
            ax.imshow(looks[row, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            colour = "red" if c == planted_class(seed) else "black"
            ax.set_title(f"{FASHION_MNIST[c][:11]}\n{float(best['detection']):.2f} / {float(best['path']):+.2f}",
                         fontsize=7, color=colour)
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.5 if colour == "red" else 0.5)
        for ax in line:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Patch prototypes of held-out seed {seed}'s models (no mark used): each class's best patch, "
                 "mark_match / mark_path; planted class in red", fontsize=9, y=0.995)
    fig.subplots_adjust(top=0.955, hspace=0.55, wspace=0.12)
    save_figure(fig, path)
    LOG.info("wrote %s", path)


def first_share(rows: list[dict], key: str) -> str:
    rs = [r for r in rows if r.get(key) not in (None, "")]
    return f"{sum(int(r[key]) == 1 for r in rs)}/{len(rs)}" if rs else "-"


def markdown(rows: list[dict], s: Settings) -> str:
    runs = list(dict.fromkeys(r["benchmark"] for r in rows))
    lines = ["# Planted marks: single-model screening", "",
             "Commands: " + "; ".join(f"`{c}`" for c in runs) + f". Models: experiments/shortcuts settings "
             f"({s.epochs} epochs, {s.train_samples} training images, share {s.share}). Screening: 8 equidistant "
             "baselines + grey (the default carriers). Then on the model's own prototypes as the only carriers "
             "(`protoscope-generate experiment=fashion`, 10 classes x 3 seeds, 10 s, then "
             "`protoscope-audit run=<it> "
             + " ".join(PROTOTYPE_CARRIERS_ONLY) + "`): chosen for the global mark after seeds "
             f"{', '.join(map(str, CHOSEN_ON))}; the other seeds are held out. Applied to every mark on 2026-12-07, "
             "after the default carriers had missed random_square on seeds 0, 6 and 8 (two of them held out): for the "
             "pattern marks that column was not chosen blind to those seeds.", "",
             "| mark | seeds | planted first (logit) | planted first (log-prob) | mean rank "
             "| planted gain / best other "
             "| planted first on its prototypes (logit, log-prob) |",
             "|---|---|---|---|---|---|---|"]
    for mark in dict.fromkeys(r["mark"] for r in rows):
        by_mark = [r for r in rows if r["mark"] == mark]
        for label, rs in seed_groups(by_mark):
            lines.append(f"| {mark} | {label}: {' '.join(str(r['seed']) for r in rs)} | "
                         f"{sum(int(r['rank']) == 1 for r in rs)}/{len(rs)} | "
                         f"{sum(int(r['logprob_rank']) == 1 for r in rs)}/{len(rs)} | "
                         f"{sum(int(r['rank']) for r in rs) / len(rs):.1f} | "
                         f"{sum(float(r['logit_gain']) for r in rs) / len(rs):.2f} / "
                         f"{sum(float(r['best_other_logit_gain']) for r in rs) / len(rs):.2f} | "
                         f"{first_share(rs, 'prototype_rank')}, {first_share(rs, 'prototype_logprob_rank')} |")
    lines += ["", "## Per model", "", "| mark | seed | planted class | rank | log-prob rank | logit gain ± std | "
              "best other gain | median carrier rank | rank on its prototypes |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['mark']} | {r['seed']} | {r['planted_class']} ({r['planted_index']}) | {r['rank']} | "
              f"{r['logprob_rank']} | {float(r['logit_gain']):.2f} ± {float(r['logit_gain_std']):.2f} | "
              f"{float(r['best_other_logit_gain']):.2f} | {float(r['median_carrier_rank']):.0f} | "
              f"{r.get('prototype_rank') or '-'} |" for r in rows]
    return "\n".join(lines) + "\n"


def typed(value: str) -> Any:
    """A CSV cell back as the bool, int or float it was written from (else the string)."""
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def merged(path: Path, new: list[dict], keys: tuple[str, ...] = ("mark", "seed")) -> list[dict]:
    """``new`` rows plus the rows of ``path`` (a CSV this script wrote) whose ``keys`` are not in ``new`` (rows
    lacking a key, written by an older version of this script, are dropped)."""
    def key(r: dict) -> tuple:
        return tuple(str(r[k]) for k in keys)

    done = {key(r) for r in new}
    if not path.exists():
        return new
    with path.open(newline="") as fh:
        kept = [{k: typed(v) for k, v in r.items()} for r in csv.DictReader(fh)
                if all(r.get(k) for k in keys) and key(r) not in done]
    order = {m: i for i, m in enumerate(MARKS)}
    return sorted(kept + new, key=lambda r: (int(r["seed"]), order[r["mark"]], *(str(r[k]) for k in keys[2:])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--marks", nargs="+", default=list(MARKS), choices=MARKS)
    parser.add_argument("--out", type=Path, default=Path("outputs/audit/planted"))
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (the shortcut benchmark's: 2)")
    parser.add_argument("--train-samples", type=int, default=20000, help="training images (benchmark: 20000)")
    parser.add_argument("--patch-steps", type=int, default=200, help="steps per patch prototype (0: no patch step)")
    parser.add_argument("--patch-seeds", type=int, default=3, help="patches per class (a class scores its best)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES, help="patch recipes")
    parser.add_argument("--prototype-carriers", nargs="*", default=list(MARKS), choices=MARKS,
                        help="marks also screened on the model's own prototypes as the only carriers")
    parser.add_argument("--control-marks", action="store_true",
                        help="only score the finished patch audits' path agreement with every mark kind, then write "
                             "the tables (nothing trained or audited again)")
    parser.add_argument("--tables-only", action="store_true",
                        help="train and audit nothing: write planted.md again from the CSVs beside this script")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    s = Settings(seeds=args.seeds, marks=args.marks, out=args.out.resolve(), epochs=args.epochs,
                 train_samples=args.train_samples)
    invocation = public("python " + " ".join(sys.argv))
    rows, patches = [], []
    start = time.perf_counter()
    only_tables = args.tables_only or args.control_marks  # nothing trained or audited again
    for seed in [] if only_tables else s.seeds:
        for mark in s.marks:
            train_step(s, seed, mark)
            rows.append({"benchmark": invocation, **audit_step(s, seed, mark)})
            if mark in args.prototype_carriers:
                rows[-1].update(prototype_screen_step(s, seed, mark))
            LOG.info("%s seed %d: planted class rank %s (on its prototypes: %s)", mark, seed, rows[-1]["rank"],
                     rows[-1].get("prototype_rank", "-"))
            for recipe in args.recipes if args.patch_steps else ():
                patches += patch_step(s, seed, mark, args.patch_steps, recipe, args.patch_seeds)
    controls = [r for seed in s.seeds for mark in s.marks for recipe in args.recipes
                for r in control_step(s, seed, mark, recipe, args.patch_seeds, invocation)
                ] if args.control_marks else []
    controls = merged(HERE / "planted_control_marks.csv", controls, keys=("mark", "seed", "recipe"))
    if args.control_marks:
        write_csv(HERE / "planted_control_marks.csv", controls)
    rows = merged(HERE / "planted.csv", rows)
    if not only_tables:
        write_csv(HERE / "planted.csv", rows)
    text = markdown(rows, s)
    patches = merged(HERE / "planted_patches.csv", patches, keys=("mark", "seed", "recipe"))
    if patches:
        if not only_tables:
            write_csv(HERE / "planted_patches.csv", patches)
        steps = args.patch_steps or parser.get_default("patch_steps")  # rows kept from the CSV: the default run's
        text += "\n".join(patch_markdown(patches, steps) + path_markdown(patches) + control_markdown(controls)) + "\n"
        patch_figure(s, patches)
    write_text(HERE / "planted.md", text)
    LOG.info("done in %.0f s: %s", time.perf_counter() - start, HERE / "planted.md")


if __name__ == "__main__":
    main()
