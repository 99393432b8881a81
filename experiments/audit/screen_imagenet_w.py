#!/usr/bin/env python
"""ImageNet-W on EfficientNet-Lite0: does mark screening with the watermark, with no photos, rank the
watermark classes (carton, safe, monitor, broom, apron) on top of all 1000 classes?

One ``protoscope-audit`` run: the data-free ranking (8 equidistant baselines + grey) and, as a
comparison in the same table, the ranking on photos (``reference=imagenette``, 50 per class: the 500
photos of an Imagenette-layout copy given by $PROTOSCOPE_IMAGENETTE_ROOT or --photos). The photos never
enter the data-free ranking.

    PROTOSCOPE_IMAGENETTE_ROOT=<imagenette val copy> python experiments/audit/screen_imagenet_w.py

Writes ``imagenet_w.md`` / ``imagenet_w.csv`` and ``imagenet_w_screening.png`` next to this script; the
audit folder is ``outputs/audit/imagenet_w/`` (resumable: a completed audit is skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from protoscope.cli import compose
from protoscope.io import write_csv, write_text

HERE = Path(__file__).resolve().parent
WATERMARK_CLASSES = {478: "carton", 771: "safe", 664: "monitor", 462: "broom", 411: "apron"}


def overrides(out: Path, photos: int, root: str | None) -> list[str]:
    cmd = ["model=efficientnet_lite0", "mark=imagenet_w",
           f"screening.classes=[{','.join(str(c) for c in WATERMARK_CLASSES)}]", "logger=none",
           f"paths.output_dir={out}"]
    if photos:
        cmd += [f"carriers.photos={photos}", "reference=imagenette", "reference.download=false"]
        if root:
            cmd.append(f"reference.root={root}")
    return cmd


def markdown(rows: list[dict], command: str, top: list[dict], photo_top: list[dict] | None) -> str:
    has_photos = photo_top is not None
    lines = ["# ImageNet-W watermark screening on EfficientNet-Lite0 (1000 classes)", "",
             f"Command: `{command}`", "",
             "Rank of each class among all 1000 by the mean logit gain when the watermark is pasted "
             "(log-prob gain rank in brackets). Data-free carriers: conf/audit.yaml's (8 equidistant baselines, "
             "5 grey levels, 5 colours) as changed by the command's carriers.* settings; photos: the ranking on "
             "the photos alone (a comparison, never part of the data-free ranking).", "",
             "| class | index | data-free rank | data-free logit gain |" + (" photo rank | photo logit gain |" if has_photos else ""),
             "|---|---|---|---|" + ("---|---|" if has_photos else "")]
    for r in rows:
        line = (f"| {r['class_name']} | {r['class_index']} | {r['carriers_rank']} ({r['carriers_logprob_rank']}) | "
                f"{r['carriers_logit_gain']:.3f} |")
        if has_photos:
            line += f" {r['photos_rank']} ({r['photos_logprob_rank']}) | {r['photos_logit_gain']:.3f} |"
        lines.append(line)
    ranks = [r["carriers_rank"] for r in rows]
    lines += ["", f"Carton rank {rows[0]['carriers_rank']} (goal: top 5); all five in the top "
              f"{max(ranks)} (goal: top 30).", "", "## Data-free top 10", "",
              "| rank | class | logit gain ± std | log-prob rank |", "|---|---|---|---|"]
    lines += [f"| {r['rank']} | {r['class_name']} ({r['class_index']}) | {r['logit_gain']:.3f} ± "
              f"{r['logit_gain_std']:.3f} | {r['logprob_rank']} |" for r in top[:10]]
    if has_photos:
        lines += ["", "## Photo top 10", "", "| rank | class | logit gain ± std |", "|---|---|---|"]
        lines += [f"| {r['rank']} | {r['class_name']} ({r['class_index']}) | {r['logit_gain']:.3f} ± "
                  f"{r['logit_gain_std']:.3f} |" for r in photo_top[:10]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/audit/imagenet_w"))
    parser.add_argument("--photos", type=int, default=50, help="photos per class for the comparison (0: none)")
    parser.add_argument("--root", default=os.environ.get("PROTOSCOPE_IMAGENETTE_ROOT"))
    parser.add_argument("--from-audit", type=Path, default=None,
                        help="tabulate a completed protoscope-audit folder of this screening instead of running it")
    parser.add_argument("--photos-from", type=Path, default=None,
                        help="take the photo ranking from this completed audit folder (one with carriers.photos)")
    args = parser.parse_args()
    if args.from_audit:
        args.out = args.from_audit
        record = json.loads((args.out / "run.json").read_text())
        if record.get("status") != "completed":
            raise SystemExit(f"{args.out} holds no completed audit")
        tables = json.loads((args.out / "results" / "screening.json").read_text())["tables"]
        command = "protoscope-audit " + " ".join(record["overrides"])
    else:
        from protoscope.audit.run import run_audit

        cmd = overrides(args.out, args.photos, args.root)
        tables = run_audit(compose("audit", cmd)).results["screening"].tables
        command = "protoscope-audit " + " ".join(cmd)
    if args.photos_from:
        other = json.loads((args.photos_from / "run.json").read_text())
        photos = json.loads((args.photos_from / "results" / "screening.json").read_text())["tables"]
        tables["screening_photos"] = photos["screening_photos"]
        command += "; photos: protoscope-audit " + " ".join(other["overrides"])
        by_class = {r["class_index"]: r for r in photos["screening_photos"]}
        for r in tables["screening_classes"]:
            p = by_class[r["class_index"]]
            r.update(photos_rank=p["rank"], photos_logprob_rank=p["logprob_rank"], photos_logit_gain=p["logit_gain"])
    rows = [r for r in tables["screening_classes"] if r["class_index"] in WATERMARK_CLASSES]
    write_csv(HERE / "imagenet_w.csv", [{**r, "command": command} for r in rows])
    write_text(HERE / "imagenet_w.md", markdown(rows, command, tables["screening"], tables.get("screening_photos")))
    shutil.copyfile(args.out / "screening.png", HERE / "imagenet_w_screening.png")
    shutil.copyfile(args.out / "mark.png", HERE / "imagenet_w_mark.png")
    print((HERE / "imagenet_w.md").read_text())


if __name__ == "__main__":
    main()
