#!/usr/bin/env python
"""ImageNet-W without the mark: do patch prototypes of the watermark classes look like the watermark text?

No photos and no watermark are used to find the patches. Carriers are protoscope-audit's
(:mod:`protoscope.audit.carriers`): grey, equidistant baselines (every class equally likely, L_pv minimised
from seeded starts) and seeded plain colours; half of the baselines and colours optimise the patches, the
other half (held out) measure each class's gain. Then, per patch, the best mask-weighted correlation over all positions with the ImageNet-W
watermark text as ``mark=imagenet_w`` draws it (its font from ``pip install 'protoscope[audit]'``), the
ROC AUC of watermark classes against control classes, and the shortcut candidates: each class's patch pasted
on the held-out carriers and on the model's prototypes of the other classes.

    nice python experiments/audit/patches.py [--classes ...] [--size 64] [--steps 150] [--out outputs/audit/imagenet_w_patches]
        [--carrier-run <protoscope-generate run of other classes>]   # its prototypes become carriers too

Writes ``patches.pt``, ``patches.png``, ``gains.csv``, ``match.csv``, ``candidates.csv/.md`` and
``summary.json`` to ``--out``, and the figure ``patches_imagenet_w.png`` beside this script. Stages whose
result file exists in ``--out`` with the same settings are skipped (resume).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from protoscope.audit.candidates import best_rows, shortcut_candidates
from protoscope.audit.carriers import equidistant_baselines, uniform_carriers
from protoscope.audit.path_agreement import agreement, mark_change, patch_changes
from protoscope.audit.patches import PatchResult, PatchSettings, appearance, optimise_patches, patch_gains, patch_grid
from protoscope.audit.writers import write_tables
from protoscope.cli import compose
from protoscope.io import write_csv, write_json, write_png, write_torch
from protoscope.metrics import roc_auc
from protoscope.models import load_model
from protoscope.shortcuts.marks import MarkKind, make_mark
from protoscope.shortcuts.matching import template_match

HERE = Path(__file__).resolve().parent
WATERMARK = (478, 771, 664)  # carton, safe, monitor (Li et al. 2023; Bykov et al. 2023)
CONTROLS = (0, 217, 497, 574, 701)  # tench, English springer, church, golf ball, parachute (Imagenette, no text)


def carriers(classifier, per_kind: int, steps: int, param: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(optimisation carriers, held-out carriers) from :mod:`protoscope.audit.carriers`: grey plus half of the
    equidistant baselines and of the seeded plain colours, and the other halves."""
    eq = equidistant_baselines(classifier, 2 * per_kind, steps, param=param, seed=1).images
    plain = uniform_carriers(classifier, [0.5], 2 * per_kind, seed=2).images  # grey, then the colours
    return (torch.cat([plain[:1], eq[:per_kind], plain[1:1 + per_kind]]),
            torch.cat([eq[per_kind:], plain[1 + per_kind:]]))


def with_run_carriers(train: torch.Tensor, held: torch.Tensor, run: Path, exclude: set[int]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``train`` and ``held`` with the prototypes of a ``protoscope-generate`` run added (alternately), leaving
    out prototypes of the patch classes (a patch must raise its class on images of other classes)."""
    state = torch.load(run / "prototypes.pt", map_location="cpu", weights_only=True)
    keep = [i for i, c in enumerate(state["class_indices"]) if int(c) not in exclude]
    if not keep:
        raise SystemExit(f"{run} holds prototypes of the patch classes only: give a run of other classes")
    images = state["images"].float()[keep]
    return torch.cat([train, images[0::2]]), torch.cat([held, images[1::2]])


def watermark(size: int, overrides: tuple[str, ...] = ("mark=imagenet_w",)) -> MarkKind:
    """The ImageNet-W watermark as protoscope-audit draws it (``mark=imagenet_w``, the imagenet-w font), or
    another mark given by its audit ``overrides``."""
    return make_mark(OmegaConf.to_container(compose("audit", list(overrides)).mark, resolve=True), size, 3)


# other marks the patches are compared with (is the path agreement specific to the watermark?)
CONTROL_MARKS = {"Latin text SALE (same font)": ("mark=text", "mark.text=SALE"),
                 "digits 123456 (same font)": ("mark=text", "mark.text=123456"),
                 "a white 24 px square": ("mark=square", "mark.height=24", "mark.width=24"),
                 "whole-image stripes": ("mark=stripes",)}


def control_marks(classifier, changes: dict[str, torch.Tensor], held: torch.Tensor, positives: list[bool]
                  ) -> list[dict]:
    """Per mark of ``CONTROL_MARKS``: the ROC AUC of the watermark classes' path agreement with it (the patches'
    ``changes`` on ``held``, :func:`patch_changes`), and what the mark itself does to carton, safe and monitor
    (mean log-prob gain on ``held``)."""
    rows = []
    for name, overrides in CONTROL_MARKS.items():
        mark = watermark(classifier.input_size, overrides)
        agrees = agreement(changes, mark_change(classifier, held, mark))
        gain = watermark_effect(classifier, mark, held)
        rows.append({"mark": name, "overrides": " ".join(overrides),
                     "roc_auc_mark_path": roc_auc(agrees.tolist(), positives),
                     **{f"gain_{classifier.class_names[c].split(',')[0]}": float(gain[c]) for c in WATERMARK}})
    return rows


def watermark_template(mark: MarkKind) -> torch.Tensor:
    """``[h, w]`` paste weight of the watermark text in its window (the text's strokes)."""
    return mark.template()[1][0]


@torch.no_grad()
def watermark_effect(classifier, mark: MarkKind, images: torch.Tensor) -> torch.Tensor:
    """``[K]`` mean log-probability gain of every class when the ImageNet-W watermark is added to ``images``."""
    before = classifier.network(images).log_softmax(-1)
    return (classifier.network(mark.paste(images)).log_softmax(-1) - before).mean(0)


def text_crop(mark: MarkKind, size: int, patch: int) -> torch.Tensor:
    """``[1, 3, patch, patch]``: the watermark on grey, cropped around its first character (a positive control)."""
    marked = mark.paste(torch.full((1, 3, size, size), 0.5))
    top = int(0.4 * size)
    return marked[:, :, top:top + patch, 2:2 + patch]


def prototypes(classifier, classes: list[int], steps: int) -> torch.Tensor:
    """The model's prototypes (protoscope's ``render``: Fourier, transform m, -logit) of ``classes``."""
    from protoscope.generation.renderer import render
    from protoscope.objectives import Logit

    targets = torch.nn.functional.one_hot(torch.tensor(classes), classifier.num_classes).float()
    return render(classifier, Logit(), steps=steps, rows=len(classes), targets=targets, progress=False)


def cached(path: Path, key: dict, make):
    """``make()``'s tensors, stored at ``path`` with ``key``; reused when the key matches (resume)."""
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("key") == json.dumps(key, sort_keys=True):
            return state["value"]
    t = time.time()
    value = make()
    write_torch(path, {"key": json.dumps(key, sort_keys=True), "value": value})
    print(f"{path.name}: {time.time() - t:.0f} s", flush=True)
    return value


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--classes", type=int, nargs="+", default=[*WATERMARK, *CONTROLS])
    ap.add_argument("--positives", type=int, nargs="+", default=list(WATERMARK))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--per-step", type=int, default=2, help="carriers per row and step")
    ap.add_argument("--param", default="fourier")
    ap.add_argument("--tv", type=float, default=0.0)
    ap.add_argument("--kind", default="image", choices=["image", "overlay"])
    ap.add_argument("--colour", default="uniform", choices=["uniform", "pixel"],
                    help="an overlay's colour: one per patch or one per pixel (Neural Cleanse's pattern)")
    ap.add_argument("--opacity", type=float, default=1.0)
    ap.add_argument("--mask-weight", type=float, default=0.0)
    ap.add_argument("--carriers", type=int, default=3, help="equidistant and plain-colour carriers per half")
    ap.add_argument("--baseline-steps", type=int, default=60)
    ap.add_argument("--baseline-param", default="fourier", help="equidistant baselines' parameterisation")
    ap.add_argument("--prototype-steps", type=int, default=64, help="0: no prototypes among the carriers")
    ap.add_argument("--carrier-run", type=Path, default=None,
                    help="a protoscope-generate run of other classes: its prototypes become carriers too (every "
                         "other one optimises the patches, the rest are held out)")
    ap.add_argument("--per-side", type=int, default=3, help="evaluation positions per side (per_side² in all)")
    ap.add_argument("--control-marks", action="store_true",
                    help="also score the patches' path agreement with other marks (text, digits, a square, stripes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("outputs/audit/imagenet_w_patches"))
    ap.add_argument("--figure", type=Path, default=HERE / "patches_imagenet_w.png")
    args = ap.parse_args(argv)
    command = "python experiments/audit/patches.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classifier = load_model(compose("generate", ["model=efficientnet_lite0"]).model)
    size = classifier.input_size
    out = args.out

    carriers_key = {"from": "protoscope.audit.carriers", "n": args.carriers, "steps": args.baseline_steps,
                    "param": args.baseline_param}
    train, held = cached(out / "carriers.pt", carriers_key,
                         lambda: carriers(classifier, args.carriers, args.baseline_steps, args.baseline_param))
    if args.carrier_run is not None:
        train, held = with_run_carriers(train, held, args.carrier_run, set(args.classes))
        carriers_key["run"] = str(args.carrier_run)
    classes = [c for c in args.classes for _ in args.seeds]
    seeds = [s for _ in args.classes for s in args.seeds]
    settings = PatchSettings(size=args.size, steps=args.steps, lr=args.lr, carriers_per_step=args.per_step,
                             param=args.param, tv_weight=args.tv, kind=args.kind, opacity=args.opacity,
                             mask_weight=args.mask_weight, colour=args.colour)
    key = {"classes": classes, "seeds": seeds, "carriers": carriers_key, **vars(settings)}
    patches = cached(out / "patches.pt", key, lambda: optimise_patches(classifier, train, classes, settings, seeds,
                                                                       progress=True).patches)
    gains = patch_gains(classifier, patches, classes, held, args.per_side, settings.paste_opacity)
    mark = watermark(size)
    template = watermark_template(mark)
    looks = appearance(patches, classifier.channels)  # overlays pasted on grey
    corr = template_match(looks, template, template)
    effect = watermark_effect(classifier, mark, held)
    for g, c, s in zip(gains, corr.tolist(), seeds):
        g.update(seed=s, text_corr=c, watermark_class=g["class_index"] in args.positives,
                 watermark_logprob_gain=float(effect[g["class_index"]]),
                 watermark_gain_rank=int((effect > effect[g["class_index"]]).sum()) + 1)
    # does the model read each patch as it reads the watermark? (activation-path agreement on the held-out carriers)
    changes = patch_changes(classifier, patches, held, args.per_side, settings.paste_opacity)  # for every mark
    path = agreement(changes, mark_change(classifier, held, mark))
    for g, a in zip(gains, path.tolist()):
        g["mark_path"] = a
    control = float(template_match(text_crop(mark, size, args.size), template, template)[0])
    auc = roc_auc([g["text_corr"] for g in gains], [g["watermark_class"] for g in gains])
    auc_path = roc_auc([g["mark_path"] for g in gains], [g["watermark_class"] for g in gains])

    best = best_rows(classes, [g["logprob_gain"] for g in gains])
    pool = held
    with torch.no_grad():  # held-out carriers count as their top-1 class, prototypes as their own
        own = classifier.network(held).argmax(-1).tolist()
    if args.prototype_steps > 0:
        pool = torch.cat([held, cached(out / "prototypes.pt", {"classes": args.classes, "steps": args.prototype_steps},
                                       lambda: prototypes(classifier, list(args.classes), args.prototype_steps))])
        own += list(args.classes)
    cands = shortcut_candidates(classifier, patches[best], [classes[i] for i in best], pool, own, args.per_side,
                                settings.paste_opacity)

    write_torch(out / "patch_prototypes.pt", PatchResult(patches, classes, seeds, settings).to_state())
    write_csv(out / "gains.csv", gains)
    write_tables(out, {"candidates": cands}, command)
    write_png(out / "patches.png", patch_grid(looks, columns=len(args.seeds) * 4))
    figure(looks, gains, template, args.figure)
    summary = {"command": command, "roc_auc_text_corr": auc, "text_crop_corr": control,
               "roc_auc_mark_path": auc_path,
               "control_marks": control_marks(classifier, changes, held, [g["watermark_class"] for g in gains])
               if args.control_marks else [],
               "carton_candidate": any(r["class_index"] == 478 and r["candidate"] for r in cands),
               "carton_rank": next((r["rank"] for r in cands if r["class_index"] == 478), None),
               "gains": gains, "candidates": cands}
    write_json(out / "summary.json", summary)
    print(f"ROC AUC (text correlation, watermark vs control patches): {auc:.3f}; a crop of the text itself: "
          f"{control:.3f}")
    print(f"ROC AUC (path agreement with the watermark): {auc_path:.3f}")
    for g in gains:
        print(f"  {g['class_index']:4d} {g['class_name'][:18]:18s} seed {g['seed']} corr {g['text_corr']:+.3f} "
              f"path {g['mark_path']:+.3f} "
              f"logprob gain {g['logprob_gain']:+.2f} hit {g['hit_rate']:.2f} | watermark on the carriers: "
              f"gain {g['watermark_logprob_gain']:+.2f} rank {g['watermark_gain_rank']}")
    for r in summary["control_marks"]:
        print(f"  path agreement with {r['mark']}: ROC AUC {r['roc_auc_mark_path']:.3f}")
    print(f"carton rank among candidates: {summary['carton_rank']} candidate: {summary['carton_candidate']}")
    for r in cands:
        print(f"  #{r['rank']} {r['class_name'][:18]:18s} flip {r['flip_rate']:.2f} gain {r['logprob_gain']:+.2f} "
              f"candidate {r['candidate']}")
    print(command)


def figure(patches: torch.Tensor, gains: list[dict], template: torch.Tensor, path: Path) -> None:
    """The watermark text, then the patches (titled with class, text correlation and path agreement), 9 a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from protoscope.generation.export import save_figure

    n = len(gains)
    columns = min(n + 1, 9)
    rows = -(-(n + 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.4 * rows), squeeze=False)
    axes = axes.flatten()
    axes[0].imshow(template.numpy(), cmap="gray")
    axes[0].set_title("ImageNet-W text", fontsize=8)
    for ax, patch, g in zip(axes[1:], patches, gains):
        ax.imshow(patch.permute(1, 2, 0).numpy())
        mark = "*" if g["watermark_class"] else ""
        ax.set_title(f"{mark}{g['class_name'][:14]}\ncorr {g['text_corr']:.2f} path {g['mark_path']:+.2f}", fontsize=7)
    for ax in axes:
        ax.axis("off")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
