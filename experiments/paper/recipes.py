#!/usr/bin/env python
"""Recipe comparisons on the offline models, with an honest selection protocol: the L_hf weight sweep
and the search for a data-free recipe whose prototypes beat the median natural image.

    python experiments/paper/recipes.py fashion sweep  [--part val]
    python experiments/paper/recipes.py lite0   sweep  [--part val]
    python experiments/paper/recipes.py fashion search --part val            # selection (seed 0)
    python experiments/paper/recipes.py lite0   search --part val
    python experiments/paper/recipes.py fashion final  --part test --seed 1 --recipes <winner>

The lite0 studies use ``reference=imagenette``: add ``reference.root=<Imagenette copy>`` (passed through to every
run) or set ``$PROTOSCOPE_IMAGENETTE_ROOT``, or ``--download`` to let torchvision fetch Imagenette.

Each recipe is one ``protoscope-generate`` run (its overrides are listed in the output) with the
reference's ``part`` (``val``: a seeded half of every class's natural images; ``test``: the other half)
so the evaluation at the end of the run scores it. The script reads each run's ``metrics.json``,
``prototypes.pt`` and ``evaluation/path_similarity.json`` and writes ``<model>_<study>_<part>.md`` next to
itself. Sharpness = mean absolute difference of neighbouring pixels of the final prototypes.
Selection rule (search): among recipes whose every prototype is top-1, the highest mean Spearman
percentile (per-layer-mean definition), separately the highest mean L1 percentile; the winners are then
rerun with other seeds (``--seed 1``) against the test part (``final``).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from run import IMAGENETTE, add_reference_args, imagenette_problem, public, reference_overrides  # noqa: E402

from protoscope.regularizers import roughness  # noqa: E402

BASE = ["logger=none", "trainer.enable_progress_bar=false", "checkpoint_every=0"]
MODELS = {
    "fashion": ["experiment=fashion", "seeds_per_class=3", "reference.max_per_class=200"],
    "lite0": ["classes=[" + ", ".join(IMAGENETTE) + "]", "reference=imagenette", "schedule.prototype_steps=100"],
}
SWEEP = {f"tv weight {w}": [f"regularizer.tv.weight={w}"] for w in ("0", "0.3", "1", "3")}
SEARCH = {
    "default (fourier, m, tv+blur)": [],
    "tv weight 0 (fourier, m, blur)": ["regularizer.tv.weight=0"],
    "no blur": ["param_ops=[]"],
    "transform l, no blur": ["param_ops=[]", "transform=l"],
    "log_prob, no blur": ["param_ops=[]", "objective=log_prob"],
    "MACO-style phase only (1/f magnitude), tv+blur": ["param=maco"],
    "MACO-style, no tv/blur, contrast 2": ["param=maco", "regularizer=[]", "param_ops=[]", "param.std=2"],
    "extension: + bn_stats w=1 (model's BN running stats)": ["regularizer=[tv,bn_stats]",
                                                            "regularizer.bn_stats.weight=1"],
}
STUDIES = {"sweep": SWEEP, "search": SEARCH}


def sharpness(images: torch.Tensor) -> float:
    """Mean absolute neighbour difference of the images: L_hf's R_1, halved (the mean of both directions)."""
    return float(roughness(images, 1).mean() / 2)


def run(model: str, name: str, overrides: list[str], part: str, seed: int, out: Path,
        reference: Sequence[str] = ()) -> list[str]:
    run_dir = out / f"{model}_{part}_seed{seed}" / re.sub(r"[^A-Za-z0-9.]+", "_", name.split(" (")[0]).strip("_")
    cmd = ["protoscope-generate", *MODELS[model], *reference, *overrides, f"reference.part={part}", f"seed={seed}", *BASE,
           f"hydra.run.dir={run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir}"]
    if not (run_dir / "evaluation" / "path_similarity.json").is_file():
        print(f"[{model}] {name}: {shlex.join(cmd)}", flush=True)
        start = time.perf_counter()
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
            if subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode:
                sys.exit(f"{name} failed: see {run_dir.parent / (run_dir.name + '.log')}")
        print(f"    {time.perf_counter() - start:.0f} s", flush=True)
    return [str(run_dir), shlex.join(public(cmd))]


def row(name: str, run_dir: Path) -> tuple[list[str], dict]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ev = json.loads((run_dir / "evaluation" / "path_similarity.json").read_text())
    images = torch.load(run_dir / "prototypes.pt", weights_only=True)["images"]
    recs = ev["prototypes"]
    stats = {"top1": sum(m["target_rank"] == 1 for m in metrics), "n": len(metrics)}
    cells = [name, f"{stats['top1']}/{stats['n']}", f"{statistics.mean(m['target_prob'] for m in metrics):.3f}",
             f"{sharpness(images):.4f}"]
    for d in ("", "concat_"):
        for m in ("spearman", "l1"):
            score = statistics.mean(r[f"{m}/{'concat' if d else 'mean'}"] for r in recs)
            pct = [r[f"{m}/{d}percentile"] for r in recs]
            stats[f"{d}{m}"] = statistics.mean(pct)
            cells += [f"{score:.3f}", f"{statistics.mean(pct):.1f}", f"{100 * sum(p > 50 for p in pct) / len(pct):.0f}%"]
    return cells, stats


HEAD = ["Recipe", "top-1", "target p", "sharpness"] + [
    f"{d} {m} {c}" for d in ("mean", "concat") for m in ("Spearman", "L1") for c in ("score", "pct", "> median nat.")]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=list(MODELS))
    ap.add_argument("study", choices=["sweep", "search", "final"])
    ap.add_argument("--part", default="val", choices=["val", "test"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipes", nargs="*", default=None, help="names from the search (final)")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "paper_recipes")
    add_reference_args(ap)
    args = ap.parse_intermixed_args(argv)
    reference = reference_overrides(args, f"recipes {args.model}", args.model == "lite0")
    if reference is None:
        return 2
    problem = imagenette_problem(reference) if args.model == "lite0" else None
    if problem:
        print(f"recipes lite0: missing {problem}", file=sys.stderr)
        return 2
    recipes = SEARCH if args.study == "final" else STUDIES[args.study]
    if args.recipes:
        recipes = {k: v for k, v in recipes.items() if k in args.recipes}
    lines = [f"# {args.model}: {args.study} on the {args.part} part of the reference, seed {args.seed}", "",
             "Generated by `experiments/paper/" + Path(__file__).name + " " + " ".join(public(sys.argv[1:] if argv is None else argv))
             + "`. Every recipe is data-free (no natural image or reference statistic is used to generate) "
             "except rows marked *extension*. pct: mean percentile among the natural images of the class; "
             "> median nat.: share of prototypes above the 50th percentile.", "",
             "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    commands, results = [], {}
    for name, ov in recipes.items():
        run_dir, cmd = run(args.model, name, ov, args.part, args.seed, args.out, reference)
        cells, stats = row(name, Path(run_dir))
        lines.append("| " + " | ".join(cells) + " |")
        commands.append(cmd)
        results[name] = stats
    if args.study == "search":
        lines += [""]
        for key in ("spearman", "l1"):
            ok = {k: v for k, v in results.items() if v["top1"] == v["n"]}
            best = max(ok, key=lambda k: ok[k][key]) if ok else None
            lines.append(f"Selected for {key} (every prototype top-1, highest mean {key} percentile): "
                         f"**{best}**" if best else f"No recipe kept every prototype top-1 ({key}).")
    lines += ["", "Commands:", "", "```bash", *commands, "```", ""]
    dest = HERE / f"{args.model}_{args.study}_{args.part}_seed{args.seed}.md"
    dest.write_text("\n".join(lines))
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
