#!/usr/bin/env python
"""How natural are the prototypes (issue 17)? One table per model against held-out photos of its classes.

    python experiments/naturalness/run.py [--model lite0|fashion_cnn|fashion_vit] [--part test --seed 1] [--classes 10]
                                          [--rows <name> ...] [reference.root=<Imagenette copy>] [<override> ...]

``--model lite0`` (default): EfficientNet-Lite0 against Imagenette photos; ``--model fashion_cnn``: the
Fashion-MNIST SmallCNN that ``protoscope-train`` saved last (or ``model.checkpoint=<file>``) against
Fashion-MNIST test images; ``--model fashion_vit``: the same for the small ViT (``protoscope-train model=fashion_vit``;
it has no batch norms, so its data-free row runs without the batch-norm terms). Extra ``key=value`` arguments go to
every command.

Rows: the paper recipe, the real Lucent, ``experiment=classic`` (the default before 2026-12-07),
``experiment=natural`` (data-free; the default), ``experiment=guided``
at N = 5, 10, 25 photos per class (from the reference's *val* part, never the *test* part that scores), and the
natural photos themselves. Each row is one existing command (``protoscope-generate`` or ``protoscope-lucent``
with ``reference=<the model's> reference.part=<part> seed=<seed>``: the run scores itself at its end) into
``--out/<part>_seed<seed>_<K>classes/<row>``, run in order by :func:`protoscope.studies.steps.run_steps` (each
command records itself in its folder's ``run.json``: a completed row is skipped, so a rerun resumes). The script
reads each row's ``evaluation/path_similarity.json`` and writes ``<model>_<part>_seed<seed>_<K>classes.md|tex``
next to itself.

Selection protocol: recipes are chosen on ``--part val --seed 0`` (a guided run then takes its guide photos from
the test part, ``guide.part=test``: the photos that guide are never the ones that score), the table is reported on
``--part test --seed 1`` (guide photos from the val part).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from protoscope.studies.steps import StepFailed, run_steps
from protoscope.studies.tables import latex_table, markdown_table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
IMAGENETTE = ["tench", "English springer", "cassette player", "chain saw", "church", "French horn",
              "garbage truck", "gas pump", "golf ball", "parachute"]
FASHION = [str(i) for i in range(10)]  # Fashion-MNIST's classes by index (names such as T-shirt/top hold a slash)


@dataclass(frozen=True)
class Setting:
    """A model and the reference photos that score its prototypes."""

    title: str
    model: tuple[str, ...]
    reference: tuple[str, ...]
    classes: tuple[str, ...]
    photos: str  # the scoring photos, in words
    guided: tuple[str, ...] = ()  # overrides of the guided rows for this model, selected on its val part
    needs_copy: bool = False  # the photos need reference.root= or $PROTOSCOPE_IMAGENETTE_ROOT (no download here)
    prefix: str = ""  # of its run folders under --out
    notes: tuple[tuple[str, str], ...] = ()  # (row name, what differs on this model): added to the row's label


NATURAL = "experiment=natural (data-free; the default)"  # the data-free row's name (a setting may annotate it)
SETTINGS = {
    "lite0": Setting("EfficientNet-Lite0", (), ("reference=imagenette", "reference.max_per_class=500"),
                     tuple(IMAGENETTE), "reference=imagenette (the machine's copy: see the README)", needs_copy=True),
    "fashion_cnn": Setting("Fashion-MNIST SmallCNN (protoscope-train)", ("model=fashion_cnn",),
                           ("reference=fashion_mnist", "reference.max_per_class=200"), tuple(FASHION),
                           "reference=fashion_mnist (200 test images per class)",
                           ("regularizer.moment_match.weight=3000",), prefix="fashion_cnn_"),
    "fashion_vit": Setting("Fashion-MNIST ViT (protoscope-train model=fashion_vit)", ("model=fashion_vit",),
                           ("reference=fashion_mnist", "reference.max_per_class=200"), tuple(FASHION),
                           "reference=fashion_mnist (200 test images per class)",
                           ("regularizer.moment_match.weight=300",), prefix="fashion_vit_",
                           notes=((NATURAL, "no batch norms: without its batch-norm terms"),)),
}
BASE = ["logger=none", "trainer.enable_progress_bar=false", "checkpoint_every=0"]
IMAGE_STATS = ("clipped", "mean", "spread", "hf_energy")
MEASURES = ("spearman", "l1")
DEFINITIONS = {"mean": "percentile", "concat": "concat_percentile"}  # score key -> percentile key


@dataclass(frozen=True)
class Row:
    name: str
    command: str  # protoscope-generate | protoscope-lucent
    overrides: tuple[str, ...] = ()
    photos_per_class: int = 0  # guide photos the recipe uses (0: data-free)

    @property
    def label(self) -> str:
        return f"{self.name} (uses {self.photos_per_class} photos per class)" if self.photos_per_class else self.name

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "_", self.name).strip("_")


def guided(n: int) -> Row:
    return Row(f"experiment=guided N={n}", "protoscope-generate", ("experiment=guided", f"guide.n_images={n}"), n)


ROWS = [
    Row("paper recipe (experiment=paper)", "protoscope-generate", ("experiment=paper",)),
    Row("Lucent (torch-lucent render_vis defaults)", "protoscope-lucent"),
    Row("experiment=classic (fourier, m, tv+blur; the default before 2026-12-07)", "protoscope-generate",
        ("experiment=classic",)),
    Row(NATURAL, "protoscope-generate", ("experiment=natural",)),
    guided(5), guided(10), guided(25),
]
LUCENT = ROWS[1].name


def part_overrides(setting: Setting, part: str, seed: int, row: Row) -> list[str]:
    """The model, the reference part that scores, the seed, and for a guided row the other part as its guide."""
    out = [*setting.model, *setting.reference, f"reference.part={part}", f"seed={seed}"]
    if row.photos_per_class:
        out.append(f"guide.part={'test' if part == 'val' else 'val'}")
    return out


def command(setting: Setting, row: Row, classes: Sequence[str], part: str, seed: int, steps: int | None,
            run_dir: Path, reference: Sequence[str]) -> list[str]:
    cls = "classes=[" + ", ".join(classes) + "]"
    if row.command == "protoscope-lucent":
        return [row.command, cls, *part_overrides(setting, part, seed, row), *reference, f"hydra.run.dir={run_dir}"]
    step = [f"schedule.prototype_steps={steps}"] if steps and "experiment=paper" not in row.overrides else []
    extra = setting.guided if row.photos_per_class else ()
    return [row.command, cls, *row.overrides, *extra, *part_overrides(setting, part, seed, row), *reference, *step,
            *BASE, f"hydra.run.dir={run_dir}"]


def read_row(run_dir: Path) -> list[dict[str, Any]] | None:
    path = run_dir / "evaluation" / "path_similarity.json"
    return json.loads(path.read_text())["prototypes"] if path.is_file() else None


def _mean(values: Sequence[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def summarise(recs: list[dict[str, Any]], lucent: list[dict[str, Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(recs), "top1": sum(r["target_rank"] == 1 for r in recs),
                           "target_p": _mean([r["target_prob"] for r in recs])}
    for m in MEASURES:
        for d, pct in DEFINITIONS.items():
            out[f"{m}/{d}"] = _mean([r[f"{m}/{d}"] for r in recs])
            out[f"{m}/{pct}"] = _mean([r[f"{m}/{pct}"] for r in recs])
            out[f"{m}/{pct}/above"] = sum(r[f"{m}/{pct}"] > 50 for r in recs) / len(recs)
    for s in IMAGE_STATS:
        out[f"image/{s}"] = _mean([r[f"image/{s}"] for r in recs])
    if lucent is not None:  # classes where this row's layer-mean percentile beats Lucent's (both measures)
        theirs = {r["class_name"]: r for r in lucent}
        shared = [r for r in recs if r["class_name"] in theirs]
        out["beats_lucent"] = {m: (sum(r[f"{m}/percentile"] > theirs[r["class_name"]][f"{m}/percentile"]
                                       for r in shared), len(shared)) for m in MEASURES}
    return out


def natural_image_stats(setting: Setting, classes: Sequence[str], part: str,
                        reference: Sequence[str]) -> dict[str, float]:
    """Mean image statistics of the natural photos that score (from the cached reference statistics); of the extra
    overrides only those of the model and the reference apply (a recipe's, such as a guided weight, would not
    compose without its recipe)."""
    from hydra import compose, initialize_config_dir

    from protoscope.models import load_model
    from protoscope.paths import conf_dir
    from protoscope.reference import build_reference

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        own = [r for r in reference if r.lstrip("+~").startswith(("reference", "model"))]
        cfg = compose("generate", [*setting.model, *setting.reference, f"reference.part={part}", *own])
    classifier = load_model(cfg.model)
    indices = [int(c) if c.isdigit() else classifier.class_names.index(c) for c in classes]
    ref = build_reference(cfg.reference, classifier, indices)
    return {s: _mean([float(v) for c in indices for v in ref.image_stats[c][s]]) for s in IMAGE_STATS}


HEAD = (["Row", "top-1", "target p"]
        + [f"{m} {d} {k}" for d in ("layer-mean", "concat") for m in ("Spearman", "L1") for k in ("score", "pct", "> median")]
        + ["beats Lucent (Spearman, L1; classes)", "clipped", "colour mean", "colour spread", "hf energy"])


def cells(label: str, s: dict[str, Any]) -> list[str]:
    row = [label, f"{s['top1']}/{s['n']}", f"{s['target_p']:.3f}"]
    for d, pct in DEFINITIONS.items():
        for m in MEASURES:
            row += [f"{s[f'{m}/{d}']:.3f}", f"{s[f'{m}/{pct}']:.1f}", f"{100 * s[f'{m}/{pct}/above']:.0f}%"]
    beats = s.get("beats_lucent")
    row.append(", ".join(f"{k}/{n}" for k, n in beats.values()) if beats else "-")
    return row + [f"{s[f'image/{k}']:.3f}" if k != "hf_energy" else f"{s['image/hf_energy']:.4f}" for k in IMAGE_STATS]


def public(cmd: Sequence[str]) -> str:
    """A command as a reader would type it (no machine-specific folders)."""
    return shlex.join(re.sub(r"^(reference\.root=).*", r"\1<copy>", c) for c in cmd)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite0", choices=list(SETTINGS))
    ap.add_argument("--part", default="test", choices=["val", "test"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--classes", type=int, default=10, help="the model's first K classes (of 10)")
    ap.add_argument("--steps", type=int, default=100, help="prototype steps of the protoscope recipes (not paper)")
    ap.add_argument("--rows", nargs="*", default=None, help="row names (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "naturalness")
    args, reference = ap.parse_known_args(argv)
    setting = SETTINGS[args.model]
    if setting.needs_copy and not any(r.startswith("reference.root=") for r in reference) \
            and not os.environ.get("PROTOSCOPE_IMAGENETTE_ROOT"):
        print("naturalness: give reference.root=<Imagenette copy> or set $PROTOSCOPE_IMAGENETTE_ROOT", file=sys.stderr)
        return 2
    classes = setting.classes[:args.classes]
    notes = dict(setting.notes)
    rows = [r for r in ROWS if args.rows is None or r.name in args.rows or r.slug in args.rows]
    folder = args.out / f"{setting.prefix}{args.part}_seed{args.seed}_{args.classes}classes"
    commands, data = {}, {}
    for row in rows:
        run_dir = folder / row.slug
        shown = run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
        commands[row.slug] = command(setting, row, classes, args.part, args.seed, args.steps, shown, reference)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        seconds = run_steps(commands, folder / "logs", cwd=ROOT)
    except StepFailed as exc:
        print(f"naturalness: {exc}", file=sys.stderr)
        return 1
    for row in ROWS:  # every row that has results (also from an earlier invocation)
        recs = read_row(folder / row.slug)
        if recs is not None:
            data[row.name] = recs
    lucent = data.get(LUCENT)
    table = [cells(f"{row.label} ({notes[row.name]})" if row.name in notes else row.label,
                   summarise(data[row.name], None if row.name == LUCENT else lucent))
             for row in ROWS if row.name in data]
    nat = natural_image_stats(setting, classes, args.part, reference)
    table.append(["natural photos (the scoring part)", "-", "-", *["-", "50", "-"] * 4, "-",
                  *(f"{nat[k]:.3f}" if k != "hf_energy" else f"{nat[k]:.4f}" for k in IMAGE_STATS)])
    title = f"{setting.title}: naturalness on the {args.part} part, seed {args.seed}, {len(classes)} classes"
    lines = [f"# {title}", "",
             f"Generated by `experiments/naturalness/run.py {public(sys.argv[1:] if argv is None else argv)}`. "
             f"Photos: {setting.photos}, the {args.part} part of every class. pct: mean percentile among those "
             "natural photos; > median: share of prototypes above the 50th percentile; beats Lucent: classes whose "
             "layer-mean percentile exceeds Lucent's. Guided rows use "
             "N photos per class from the other part.", "", markdown_table(HEAD, table),
             "Commands (seconds this invocation; a completed row skips itself in a few seconds):", "", "```bash"]
    lines += [f"{public(c)}  # {seconds[n]:.0f} s" for n, c in commands.items()] + ["```", ""]
    dest = HERE / f"{args.model}_{args.part}_seed{args.seed}_{args.classes}classes"
    dest.with_suffix(".md").write_text("\n".join(lines))
    dest.with_suffix(".tex").write_text(latex_table(HEAD, table, caption=title))
    print(f"wrote {dest}.md and .tex")
    return 0


if __name__ == "__main__":
    sys.exit(main())
