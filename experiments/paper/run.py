#!/usr/bin/env python
"""The paper's tables: prototypes (the paper's recipe), the real Lucent and natural images, scored by
Spearman and L1 path similarity with percentiles, under both path definitions.

    python experiments/paper/run.py lite0 [reference.root=<Imagenette copy> | --download]
                                                 # EfficientNet-Lite0 vs Imagenette's val split (reference=imagenette)
    python experiments/paper/run.py fashion      # Fashion-MNIST SmallCNN vs its test set (offline)
    python experiments/paper/run.py resnet18  --imagenet-val /data/imagenet/val [--all-classes]
    python experiments/paper/run.py googlenet --imagenet-val /data/imagenet/val [--all-classes]

Each table is a sequence of three commands, each into its own folder under ``--out`` (default
``outputs/paper/<table>``). Each command records its run in that folder's ``run.json``: started again on a
folder with its completed run it skips it (another recipe: it refuses in one line), so a rerun resumes
(``protoscope.studies.steps``; delete a folder's run.json to redo that step):

    protoscope-generate experiment=paper model=<m> classes=<c> seeds_per_class=<s>   -> paper/
    protoscope-lucent   model=<m> classes=<c> seeds_per_class=<s>                    -> lucent/
    protoscope-evaluate run_dir=paper/ baseline_run=lucent/ baseline_label=lucent reference=<r> -> evaluation/

The Lite0 table's photos come from ``reference.root=`` (passed through to the evaluation), else from
``$PROTOSCOPE_IMAGENETTE_ROOT``, else from an earlier download in ``paths.data_dir``; ``--download`` first lets
torchvision fetch Imagenette there. With none of these, the script stops in one line naming them.

It then reads ``evaluation/path_similarity.json`` (never log lines) and writes ``<table>.md`` and
``<table>.tex`` (``protoscope.studies.tables``) and the per-layer figures under ``<table>/`` next to this
script. Every row's label names the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from protoscope.studies.steps import StepFailed, run_steps
from protoscope.studies.tables import latex_table, markdown_table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
IMAGENETTE_ENV = "PROTOSCOPE_IMAGENETTE_ROOT"
BASE = ["logger=none", "trainer.enable_progress_bar=false"]
IMAGENETTE = ["tench", "English springer", "cassette player", "chain saw", "church", "French horn",
              "garbage truck", "gas pump", "golf ball", "parachute"]
# The paper's two named classes first, then eight classes with a spread of shapes and textures.
PAPER_TEN = ["academic gown", "mortarboard", "tench", "goldfish", "tabby", "espresso", "daisy", "church",
             "French horn", "parachute"]
MEASURES = ("spearman", "l1")
DEFINITIONS = {"layer_mean": ("mean", "percentile", "mean_scores", "Path = mean over layers of per-layer scores"),
               "concat": ("concat", "concat_percentile", "concat_scores",
                          "Path = all layers concatenated, each standardised by the class mean's mean/std")}
# Row labels: the command that made each row (the table's "Commands" section gives them in full).
SOURCES = {"prototype": "prototypes: protoscope-generate experiment=paper",
           "lucent": "Lucent: protoscope-lucent (torch-lucent render_vis defaults)"}
NATURAL = "natural images: protoscope-evaluate (each vs the mean of the others)"


@dataclass
class Table:
    name: str
    title: str
    model: str
    classes: list[str] | str
    seeds: int
    reference: list[str]
    needs_imagenet: bool = False
    torchvision: str | None = None      # torchvision weights enum to look for in the torch hub cache
    expected: str = ""                  # expected run time on a 2-core CPU
    extra: list[str] = field(default_factory=list)
    model_args: list[str] = field(default_factory=list)   # for every step that loads the model


def tables(imagenet_val: str | None, all_classes: bool, reference: Sequence[str] = ()) -> dict[str, Table]:
    ref_in = ["reference=imagenet_val", f"reference.root={imagenet_val or '???'}"]
    paper_classes: list[str] | str = "all" if all_classes else PAPER_TEN
    return {
        "lite0": Table("lite0", "EfficientNet-Lite0 (ImageNet) vs the ImageNet validation sample",
                       "efficientnet_lite0", IMAGENETTE, 1,
                       ["reference=imagenette", *reference],
                       expected="~45 min for the paper recipe (10 x 550 steps at 224 px), ~15 min Lucent"),
        "fashion": Table("fashion", "Fashion-MNIST SmallCNN vs its test set", "fashion_cnn", "all", 3,
                         ["reference=fashion_mnist"], expected="~2 min",
                         model_args=[f"model.name={default_fashion_model()}"]),
        "resnet18": Table("resnet18", "ResNet-18 (torchvision) vs ImageNet validation", "resnet18", paper_classes, 1,
                          ref_in, needs_imagenet=True, torchvision="ResNet18_Weights.IMAGENET1K_V1",
                          expected="GPU: minutes; 2-core CPU: ~1 h for 10 classes"),
        "googlenet": Table("googlenet", "GoogLeNet / Inception V1 (torchvision) vs ImageNet validation", "googlenet",
                           paper_classes, 1, ref_in, needs_imagenet=True,
                           torchvision="GoogLeNet_Weights.IMAGENET1K_V1",
                           expected="GPU: minutes; 2-core CPU: ~1 h for 10 classes"),
    }


def default_fashion_model() -> str:
    """The models-folder name of the model a plain ``protoscope-train`` makes (its recipe's hash), so the
    Fashion table uses that model whatever else was trained since."""
    from protoscope.cli import compose
    from protoscope.models.store import recipe_hash, training_recipe

    return f"fashion_cnn-{recipe_hash(training_recipe(compose('train', [])))}"


def classes_arg(classes: list[str] | str) -> str:
    return "classes=all" if classes == "all" else "classes=[" + ", ".join(classes) + "]"


def commands(t: Table, out: Path) -> dict[str, list[str]]:
    common = [f"model={t.model}", *t.model_args, classes_arg(t.classes), f"seeds_per_class={t.seeds}"]
    return {
        "paper": ["protoscope-generate", "experiment=paper", *common, *t.extra, *BASE, f"hydra.run.dir={out / 'paper'}"],
        "lucent": ["protoscope-lucent", *common, f"hydra.run.dir={out / 'lucent'}"],
        "evaluation": ["protoscope-evaluate", f"run_dir={out / 'paper'}", f"baseline_run={out / 'lucent'}",
                       "baseline_label=lucent", *t.reference, "measures=[spearman,l1]", "max_panels=0",
                       "progress=false", f"out_dir={out / 'evaluation'}", f"hydra.run.dir={out / 'evaluation'}"],
    }


def missing_inputs(t: Table, imagenet_val: str | None) -> list[str]:
    """What a table needs that this machine lacks (checked before anything runs; nothing is downloaded)."""
    missing = []
    if t.torchvision:
        import torch
        import torchvision

        enum, member = t.torchvision.split(".")
        url = getattr(getattr(torchvision.models, enum), member).url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if not cached.is_file():
            missing.append(f"the {t.model} ImageNet weights ({cached} absent: run once with internet so "
                           "torchvision downloads them, or set TORCH_HOME to a folder that has them)")
    if t.needs_imagenet and not (imagenet_val and Path(imagenet_val).is_dir()):
        missing.append("the ImageNet validation folder (--imagenet-val or $IMAGENET_VAL: <root>/<wnid>/*.JPEG, "
                       f"{'not found: ' + imagenet_val if imagenet_val else 'not set'})")
    if t.name == "fashion":
        from protoscope.errors import CheckpointError
        from protoscope.models.store import find_model
        from protoscope.paths import models_dir

        name = t.model_args[0].split("=", 1)[1]
        try:
            find_model(models_dir(), name)
        except CheckpointError:
            missing.append(f"the Fashion-MNIST model of protoscope-train's default recipe ({name} in "
                           f"{models_dir()}: run protoscope-train)")
    if t.name == "lite0":
        problem = imagenette_problem(t.reference)
        if problem:
            missing.append(problem)
    return missing


def reference_root(reference: Sequence[str]) -> str | None:
    """The ``reference.root=`` among a table's reference overrides, else ``$PROTOSCOPE_IMAGENETTE_ROOT``."""
    given = [o.split("=", 1)[1] for o in reference if o.startswith("reference.root=")]
    return given[-1] if given else os.environ.get(IMAGENETTE_ENV) or None


def add_reference_args(ap: argparse.ArgumentParser) -> None:
    """``--download`` and ``reference.KEY=VALUE`` overrides of reference=imagenette (the Lite0 table's photos)."""
    ap.add_argument("--download", action="store_true", help="lite0: let torchvision download Imagenette if needed")
    ap.add_argument("reference", nargs="*", metavar="reference.KEY=VALUE",
                    help="lite0: overrides of reference=imagenette, e.g. reference.root=/data/imagenette")


def reference_overrides(args: argparse.Namespace, what: str, lite0: bool) -> list[str] | None:
    """The reference overrides to pass on (None after a one-line refusal on stderr)."""
    bad = [o for o in args.reference if not o.startswith("reference.") or "=" not in o]
    if bad or (args.reference and not lite0):
        print(f"{what}: only lite0 takes reference.KEY=VALUE overrides, got {bad or args.reference}", file=sys.stderr)
        return None
    return [*args.reference, *(["reference.download=true"] if args.download else [])]


def imagenette_problem(reference: Sequence[str]) -> str | None:
    """Why ``reference=imagenette`` cannot find its photos without downloading (None when it can, or may fetch)."""
    from protoscope.errors import ReferenceDataError
    from protoscope.reference import ImagenetteSource

    download = "reference.download=true" in reference
    root = reference_root(reference)
    data_dir = ([o.split("=", 1)[1] for o in reference if o.startswith("reference.data_dir=")] or [None])[-1]
    try:  # with --download, the download happens here, before anything heavy runs
        ImagenetteSource(root=root, download=download, data_dir=data_dir).wnid_folders()
    except ReferenceDataError as exc:
        if download:
            return f"Imagenette's val photos ({exc})"
        where = f"{root} holds none" if root else f"reference.root= and ${IMAGENETTE_ENV} are not set"
        return (f"Imagenette's val photos ({where}): add reference.root=<copy> (or set ${IMAGENETTE_ENV}), "
                "or --download to let torchvision fetch them into paths.data_dir ($PROTOSCOPE_DATA)")
    return None


# ------------------------------------------------------------------------------------------ tables


def _mean_std(v: Sequence[float]) -> str:
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def _share(v: Sequence[bool]) -> str:
    return f"{100 * sum(v) / len(v):.0f}%"


def summarise(data: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """Per definition: rows [source, n, (score, pct, >= natural median) per measure, top-1, target p]; the
    natural row's band is the evaluation's own (``protoscope.metrics.natural_band``: 5%, median, 95%)."""
    import torch

    from protoscope.metrics import natural_band

    out: dict[str, dict[str, list[str]]] = {}
    for d, (score_key, pct_key, nat_key, _) in DEFINITIONS.items():
        rows: dict[str, list[str]] = {}
        for label in data["sources"]:
            recs = [r for r in data["prototypes"] if r["source"] == label]
            row = [SOURCES.get(label, label), str(len(recs))]
            for m in MEASURES:
                pct = [r[f"{m}/{pct_key}"] for r in recs]
                row += [_mean_std([r[f"{m}/{score_key}"] for r in recs]), f"{statistics.mean(pct):.1f}",
                        _share([p >= 50 for p in pct]), _share([p >= 100 for p in pct])]
            row += [f"{sum(r['target_rank'] == 1 for r in recs)}/{len(recs)}",
                    f"{statistics.mean(r['target_prob'] for r in recs):.3f}"]
            rows[label] = row
        nat_row = [NATURAL]
        counts = 0
        for m in MEASURES:
            values = [v for entry in data["natural"].values() for v in entry[m][nat_key]]
            counts = len(values)
            low, median, high = natural_band(torch.tensor(values)[:, None]).flatten().tolist()  # 5%, 50%, 95%
            nat_row += [f"{median:.3f} [{low:.3f}, {high:.3f}]", "≈50 (by definition)", "50%", "–"]
        rows["natural"] = [nat_row[0], str(counts), *nat_row[1:], "–", "–"]
        out[d] = rows
    return out


HEAD = ["Source", "n"] + [c for m in ("Spearman ↑", "L1 ↓") for c in
                          (f"{m} (mean ± std)", f"{m.split()[0]} pct (mean)", f"{m.split()[0]} ≥ natural median",
                           f"{m.split()[0]} = 100 pct")] + ["top-1", "target p"]


def public(reference: Sequence[str]) -> list[str]:
    """The reference overrides as a reader can rerun them (a local copy's path becomes a placeholder)."""
    return [o if not o.startswith("reference.root=") else "reference.root=<copy>" for o in reference]


def photos_note(data: dict[str, Any]) -> str:
    """Which photos the natural rows used: their count per class, and what one rank is worth."""
    counts = sorted({len(entry[MEASURES[0]]["mean_scores"]) for entry in data["natural"].values()})
    per = "/".join(str(c) for c in counts)
    sample = " (the 50-per-class ImageNet val sample of the Imagenette classes)" if counts == [50] else ""
    return (f"{per} natural photos per class{sample}, so a percentile steps by "
            f"{'/'.join(f'{100 / c:.2g}' for c in counts)}")


def markdown(t: Table, data: dict[str, Any], cmds: dict[str, list[str]], seconds: dict[str, float]) -> str:
    lines = [f"# Paper table: {t.title}", "",
             f"Model `{t.model}`, classes: {t.classes if t.classes == 'all' else ', '.join(t.classes)}; "
             f"{t.seeds} seed(s) per class. Reference: `{' '.join(public(t.reference))}`: {photos_note(data)}. Measures: Spearman and "
             "normalised L1 between a row's activation path and its class-mean path. *pct*: percentile among "
             "the natural images of the class, each scored against the mean of the others (100 = closer than "
             "every natural image: the paper's claim); *≥ natural median*: share of rows at or above the 50th "
             "percentile. Natural row: median [5%, 95%] of the natural images' own scores.", ""]
    for d, rows in summarise(data).items():
        lines += [f"## {DEFINITIONS[d][3]}", "", markdown_table(HEAD, list(rows.values()))]
    lines += ["Per-layer figures (mean over classes; natural 5–95% band): "
              f"[Spearman]({t.name}/layers_spearman.png), [L1]({t.name}/layers_l1.png).", "",
              "## Commands", "", "```bash"] + [shlex.join(public(c)) for c in cmds.values()] + ["```", ""]
    if seconds:
        lines += ["Seconds this invocation: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
                  + f" ({platform.node()}, {os.cpu_count()} CPUs).", ""]
    return "\n".join(lines)


def latex(t: Table, data: dict[str, Any]) -> str:
    out = [f"% Paper table: {t.title} (generated by experiments/paper/run.py)"]
    out += [latex_table(HEAD, list(rows.values()), caption=f"{t.title}. {DEFINITIONS[d][3]}.")
            for d, rows in summarise(data).items()]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table", choices=["lite0", "fashion", "resnet18", "googlenet"])
    ap.add_argument("--imagenet-val", default=os.environ.get("IMAGENET_VAL"))
    ap.add_argument("--all-classes", action="store_true", help="all 1000 classes (ResNet-18 / GoogLeNet)")
    ap.add_argument("--out", type=Path, default=None)
    add_reference_args(ap)
    args = ap.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    reference = reference_overrides(args, f"paper table {args.table}", args.table == "lite0")
    if reference is None:
        return 2
    t = tables(args.imagenet_val, args.all_classes, reference)[args.table]
    missing = missing_inputs(t, args.imagenet_val)
    if missing:
        print(f"paper table {t.name}: missing " + "; and ".join(missing), file=sys.stderr)
        return 2
    out = (args.out or ROOT / "outputs" / "paper" / t.name).resolve()
    try:
        seconds = run_steps(commands(t, out), logs=out, cwd=ROOT)
    except StepFailed as exc:
        print(f"paper table {t.name}: {exc}", file=sys.stderr)
        return 1
    data = json.loads((out / "evaluation" / "path_similarity.json").read_text())
    dest = HERE / t.name
    dest.mkdir(exist_ok=True)
    cmds = commands(t, out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)
    (HERE / f"{t.name}.md").write_text(markdown(t, data, cmds, seconds))
    (HERE / f"{t.name}.tex").write_text(latex(t, data))
    for m in MEASURES:
        shutil.copyfile(out / "evaluation" / f"path_similarity_{m}.png", dest / f"layers_{m}.png")
    print(f"wrote {HERE / (t.name + '.md')}, {t.name}.tex and {dest}/layers_*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
