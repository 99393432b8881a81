#!/usr/bin/env python
"""Planted marks, audited one model at a time: does mark screening rank the planted class first?

For every seed and mark kind a Fashion-MNIST SmallCNN is trained with the mark planted on 90% of one
class's images (the models of experiments/shortcuts: same settings, same planted class (3 s + 1) mod 10);
then ``protoscope-audit`` screens all 10 classes with that model's saved ``mark.pt`` on data-free
carriers (equidistant baselines and grey). No clean model, no data, no prototypes needed. Then, without the
mark, ``protoscope-audit task=patches`` optimises one patch per class on the same neutral carriers (side
``PATCH_SIZE[mark]``: a 4 px square in an 8 px patch; stripes and brightness cover the image, so their patch is
the whole image) and each patch, pasted on a grey image, is scored for the mark by the mark's own detector (the
position-free match); the ROC AUC of the planted class's patches against the other classes' is per mark kind.

    python experiments/audit/planted.py [--seeds 0 1 2 3 4] [--marks square stripes random_square brightness]

Writes ``planted.md`` / ``planted.csv`` next to this script; models and audits go to
``outputs/audit/planted/{train,audit}/``. Resumable: a trained model or a completed audit is skipped.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from protoscope.cli import compose
from protoscope.io import write_csv, write_text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "shortcuts"))
from run import Settings, planted_class, run_name, train_step  # noqa: E402  (the shortcut benchmark's models)

LOG = logging.getLogger("audit.planted")
MARKS = ("square", "stripes", "random_square", "brightness")


def audit_overrides(s: Settings, seed: int, mark: str) -> list[str]:
    model = s.out / "train" / run_name(seed, mark)
    return ["model=fashion_cnn", f"model.checkpoint={model / 'model.pt'}", "mark=file",
            f"mark.path={model / 'mark.pt'}", f"screening.classes=[{planted_class(seed)}]", "logger=none",
            f"paths.output_dir={s.out / 'audit' / run_name(seed, mark)}"]


def public(command: str) -> str:
    """A command with paths relative to the folder it was run from (no machine-specific folders in the tables)."""
    return command.replace(f"{Path.cwd()}/", "")


PATCH_SIZE = {"square": 8, "random_square": 8, "stripes": 28, "brightness": 28}


def patch_overrides(s: Settings, seed: int, mark: str, steps: int) -> list[str]:
    model = s.out / "train" / run_name(seed, mark)
    return ["model=fashion_cnn", f"model.checkpoint={model / 'model.pt'}", "mark=file",
            f"mark.path={model / 'mark.pt'}", "task=patches", f"patches.size={PATCH_SIZE[mark]}",
            f"patches.steps={steps}", "logger=none", f"paths.output_dir={s.out / 'patches' / run_name(seed, mark)}"]


def patch_step(s: Settings, seed: int, mark: str, steps: int) -> list[dict]:
    """One patch per class (no mark used to make it), each scored for the mark: one record per class."""
    import torch

    from protoscope.audit.patches import appearance, paste
    from protoscope.audit.run import load_inputs, run_audit

    cfg = compose("audit", patch_overrides(s, seed, mark, steps))
    out = run_audit(cfg)
    classifier, kind, _ = load_inputs(cfg)
    state = torch.load(out.out_dir / "patches.pt", map_location="cpu", weights_only=True)
    looks = appearance(state["patches"].float(), classifier.channels)
    size, p = classifier.input_size, looks.shape[-1]
    corner = torch.full((len(looks), 2), (size - p) // 2, dtype=torch.long)
    canvas = paste(torch.full((len(looks), classifier.channels, size, size), 0.5), looks, corner)
    scores = kind.detect(canvas).tolist()
    gains = {r["class_index"]: r for r in out.results["patches"].tables["patch_gains"]}
    return [{"mark": mark, "seed": seed, "class_index": int(c), "planted": int(c) == planted_class(seed),
             "detection": float(v), "logprob_gain": gains[int(c)]["logprob_gain"],
             "command": public("protoscope-audit " + " ".join(patch_overrides(s, seed, mark, steps)))}
            for c, v in zip(state["classes"], scores)]


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


def patch_markdown(records: list[dict], steps: int) -> list[str]:
    from protoscope.metrics import roc_auc

    lines = ["", "## Patch prototypes (no mark used to make them)", "",
             f"`protoscope-audit task=patches` (all 10 classes, one patch each, {steps} steps, side by mark kind: "
             f"{', '.join(f'{k} {v} px' for k, v in PATCH_SIZE.items())}); each patch pasted on grey and scored by "
             "the mark's detector. AUC: the planted class's patches against the other classes' (all seeds).", "",
             "| mark | ROC AUC | planted patch ranked first (of 10) | mean detection: planted / others |",
             "|---|---|---|---|"]
    for mark in dict.fromkeys(r["mark"] for r in records):
        rs = [r for r in records if r["mark"] == mark]
        auc = roc_auc([r["detection"] for r in rs], [r["planted"] for r in rs])
        seeds = sorted({r["seed"] for r in rs})
        first = sum(max((r for r in rs if r["seed"] == sd), key=lambda r: r["detection"])["planted"] for sd in seeds)
        pos = [r["detection"] for r in rs if r["planted"]]
        neg = [r["detection"] for r in rs if not r["planted"]]
        lines.append(f"| {mark} | {auc:.2f} | {first}/{len(seeds)} | {sum(pos) / len(pos):.3f} / {sum(neg) / len(neg):.3f} |")
    return lines


def markdown(rows: list[dict], s: Settings) -> str:
    lines = ["# Planted marks: single-model screening", "",
             f"Command: `python experiments/audit/planted.py --seeds {' '.join(map(str, s.seeds))} --marks "
             f"{' '.join(s.marks)} --epochs {s.epochs} --train-samples {s.train_samples}`. Models: experiments/shortcuts settings ({s.epochs} epochs, "
             f"{s.train_samples} training images, share {s.share}). Screening: 8 equidistant baselines + grey.", "",
             "| mark | planted first (logit) | planted first (log-prob) | mean rank | planted gain / best other |",
             "|---|---|---|---|---|"]
    for mark in dict.fromkeys(r["mark"] for r in rows):
        rs = [r for r in rows if r["mark"] == mark]
        lines.append(f"| {mark} | {sum(r['rank'] == 1 for r in rs)}/{len(rs)} | "
                     f"{sum(r['logprob_rank'] == 1 for r in rs)}/{len(rs)} | "
                     f"{sum(r['rank'] for r in rs) / len(rs):.1f} | "
                     f"{sum(r['logit_gain'] for r in rs) / len(rs):.2f} / "
                     f"{sum(r['best_other_logit_gain'] for r in rs) / len(rs):.2f} |")
    lines += ["", "## Per model", "", "| mark | seed | planted class | rank | log-prob rank | logit gain ± std | "
              "best other gain | median carrier rank |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['mark']} | {r['seed']} | {r['planted_class']} ({r['planted_index']}) | {r['rank']} | "
              f"{r['logprob_rank']} | {r['logit_gain']:.2f} ± {r['logit_gain_std']:.2f} | "
              f"{r['best_other_logit_gain']:.2f} | {r['median_carrier_rank']:.0f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--marks", nargs="+", default=list(MARKS), choices=MARKS)
    parser.add_argument("--out", type=Path, default=Path("outputs/audit/planted"))
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (the shortcut benchmark's: 2)")
    parser.add_argument("--train-samples", type=int, default=20000, help="training images (benchmark: 20000)")
    parser.add_argument("--patch-steps", type=int, default=200, help="steps per patch prototype (0: no patch step)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    s = Settings(seeds=args.seeds, marks=args.marks, out=args.out.resolve(), epochs=args.epochs,
                 train_samples=args.train_samples)
    rows, patches = [], []
    start = time.perf_counter()
    for seed in s.seeds:
        for mark in s.marks:
            train_step(s, seed, mark)
            rows.append(audit_step(s, seed, mark))
            LOG.info("%s seed %d: planted class rank %d", mark, seed, rows[-1]["rank"])
            if args.patch_steps:
                patches += patch_step(s, seed, mark, args.patch_steps)
    write_csv(HERE / "planted.csv", rows)
    text = markdown(rows, s)
    if patches:
        write_csv(HERE / "planted_patches.csv", patches)
        text += "\n".join(patch_markdown(patches, args.patch_steps)) + "\n"
    write_text(HERE / "planted.md", text)
    LOG.info("done in %.0f s: %s", time.perf_counter() - start, HERE / "planted.md")


if __name__ == "__main__":
    main()
