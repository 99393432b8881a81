#!/usr/bin/env python
"""ImageNet-W without the mark: do patch prototypes of the watermark classes look like the watermark text?

No photos and no watermark are used to find the patches. Carriers are the model's own baselines: grey,
equidistant images (every class equally likely, L_pv minimised from seeded noise) and smooth random noise;
half of the equidistant and noise carriers optimise the patches, the other half (held out) measure each
class's gain. Then, per patch, the best mask-weighted correlation over all positions with the ImageNet-W
watermark text rendered in its font at its size (``imagenet-w`` package: ``pip install imagenet-w``), the
ROC AUC of watermark classes against control classes, and the shortcut candidates: each class's patch pasted
on the held-out carriers and on the model's prototypes of the other classes.

    nice python experiments/audit/patches.py [--classes ...] [--size 64] [--steps 150] [--out outputs/audit/imagenet_w]

Writes ``patches.pt``, ``patches.png``, ``gains.csv``, ``match.csv``, ``candidates.csv/.md`` and
``summary.json`` to ``--out``, and the figure ``patches_imagenet_w.png`` beside this script. Stages whose
result file exists in ``--out`` with the same settings are skipped (resume).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from protoscope.audit.candidates import best_rows, shortcut_candidates, write_candidates
from protoscope.shortcuts.matching import template_match
from protoscope.audit.patches import PatchResult, PatchSettings, appearance, optimise_patches, patch_gains, patch_grid
from protoscope.cli import compose
from protoscope.errors import ConfigError
from protoscope.io import write_csv, write_json, write_png, write_torch
from protoscope.models import load_model
from protoscope.objectives import probability_variance
from protoscope.params.base import gaussian_blur

HERE = Path(__file__).resolve().parent
WATERMARK = (478, 771, 664)  # carton, safe, monitor (Li et al. 2023; Bykov et al. 2023)
CONTROLS = (0, 217, 497, 574, 701)  # tench, English springer, church, golf ball, parachute (Imagenette, no text)


def _roc_auc():
    spec = importlib.util.spec_from_file_location("shortcuts_run", HERE.parent / "shortcuts" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module.roc_auc


def equidistant(network, count: int, size: int, seed: int, steps: int, lr: float = 0.05) -> torch.Tensor:
    """``count`` images on which every class is equally likely (L_pv minimised), each from its own noise."""
    g = torch.Generator().manual_seed(seed)
    logit = (0.5 * torch.randn(count, 3, size, size, generator=g)).requires_grad_(True)
    opt = torch.optim.Adam([logit], lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        probability_variance(network(torch.sigmoid(logit))).sum().backward()
        opt.step()
    return torch.sigmoid(logit).detach()


def smooth_noise(count: int, size: int, seed: int, sigma: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = gaussian_blur(torch.randn(count, 3, size, size, generator=g), sigma)
    return (0.5 + 0.25 * x / x.flatten(1).std(1).view(-1, 1, 1, 1)).clamp(0, 1)


def carriers(network, size: int, per_kind: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(optimisation carriers, held-out carriers): grey + half of each kind, and the other halves."""
    eq = equidistant(network, 2 * per_kind, size, seed=1, steps=steps)
    noise = smooth_noise(2 * per_kind, size, seed=2)
    grey = torch.full((1, 3, size, size), 0.5)
    return torch.cat([grey, eq[:per_kind], noise[:per_kind]]), torch.cat([eq[per_kind:], noise[per_kind:]])


def watermark_template(size: int) -> torch.Tensor:
    """``[h, w]`` alpha of the ImageNet-W text at its size for ``size`` px images, cropped to the text."""
    try:
        from imagenet_w import AddWatermark
    except ImportError as exc:
        raise ConfigError(f"this experiment needs the imagenet-w package ({exc}): pip install imagenet-w") from exc
    from PIL import Image, ImageDraw

    mark = AddWatermark(size)
    canvas = Image.new("L", (2 * size, size), 0)
    ImageDraw.Draw(canvas).text((0, 0), mark.text, fill=255, font=mark.font)
    alpha = torch.tensor(list(canvas.getdata()), dtype=torch.float32).view(size, 2 * size) / 255
    rows, cols = alpha.sum(1).nonzero(), alpha.sum(0).nonzero()
    return alpha[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


@torch.no_grad()
def watermark_effect(classifier, images: torch.Tensor) -> torch.Tensor:
    """``[K]`` mean log-probability gain of every class when the ImageNet-W watermark is added to ``images``."""
    from imagenet_w import AddWatermark

    mark = AddWatermark(classifier.input_size)
    marked = torch.stack([mark(x) for x in images])
    before, after = classifier.network(images).log_softmax(-1), classifier.network(marked).log_softmax(-1)
    return (after - before).mean(0)


def text_crop(size: int, patch: int) -> torch.Tensor:
    """``[1, 3, patch, patch]``: the watermark on grey, cropped around its first character (a positive control)."""
    from imagenet_w import AddWatermark

    marked = AddWatermark(size)(torch.full((3, size, size), 0.5))
    top = int(0.4 * size)
    return marked[None, :, top:top + patch, 2:2 + patch]


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
    ap.add_argument("--opacity", type=float, default=1.0)
    ap.add_argument("--mask-weight", type=float, default=0.0)
    ap.add_argument("--carriers", type=int, default=3, help="equidistant and noise carriers per half")
    ap.add_argument("--baseline-steps", type=int, default=60)
    ap.add_argument("--prototype-steps", type=int, default=64, help="0: no prototypes among the carriers")
    ap.add_argument("--per-side", type=int, default=3, help="evaluation positions per side (per_side² in all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("outputs/audit/imagenet_w"))
    ap.add_argument("--figure", type=Path, default=HERE / "patches_imagenet_w.png")
    args = ap.parse_args(argv)
    command = "python experiments/audit/patches.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classifier = load_model(compose("generate", ["model=efficientnet_lite0"]).model)
    size = classifier.input_size
    out = args.out

    train, held = cached(out / "carriers.pt", {"n": args.carriers, "steps": args.baseline_steps},
                         lambda: carriers(classifier.network, size, args.carriers, args.baseline_steps))
    classes = [c for c in args.classes for _ in args.seeds]
    seeds = [s for _ in args.classes for s in args.seeds]
    settings = PatchSettings(size=args.size, steps=args.steps, lr=args.lr, carriers_per_step=args.per_step,
                             param=args.param, tv_weight=args.tv, kind=args.kind, opacity=args.opacity,
                             mask_weight=args.mask_weight)
    key = {"classes": classes, "seeds": seeds, **vars(settings)}
    if settings.kind == "image":  # the key of runs made before overlays existed
        key = {k: v for k, v in key.items() if k not in ("kind", "mask_weight")}
    patches = cached(out / "patches.pt", key, lambda: optimise_patches(classifier, train, classes, settings, seeds,
                                                                       progress=True).patches)
    gains = patch_gains(classifier, patches, classes, held, args.per_side)
    template = watermark_template(size)
    looks = appearance(patches, classifier.channels)  # overlays pasted on grey
    corr = template_match(looks, template, template)
    effect = watermark_effect(classifier, held)
    for g, c, s in zip(gains, corr.tolist(), seeds):
        g.update(seed=s, text_corr=c, watermark_class=g["class_index"] in args.positives,
                 watermark_logprob_gain=float(effect[g["class_index"]]),
                 watermark_gain_rank=int((effect > effect[g["class_index"]]).sum()) + 1)
    control = float(template_match(text_crop(size, args.size), template, template)[0])
    auc = _roc_auc()([g["text_corr"] for g in gains], [g["watermark_class"] for g in gains])

    best = best_rows(classes, [g["logprob_gain"] for g in gains])
    pool = held
    with torch.no_grad():  # held-out carriers count as their top-1 class, prototypes as their own
        own = classifier.network(held).argmax(-1).tolist()
    if args.prototype_steps > 0:
        pool = torch.cat([held, cached(out / "prototypes.pt", {"classes": args.classes, "steps": args.prototype_steps},
                                       lambda: prototypes(classifier, list(args.classes), args.prototype_steps))])
        own += list(args.classes)
    cands = shortcut_candidates(classifier, patches[best], [classes[i] for i in best], pool, own, args.per_side)

    write_torch(out / "patch_prototypes.pt", PatchResult(patches, classes, seeds, settings).to_state())
    write_csv(out / "gains.csv", gains)
    write_candidates(cands, out, command)
    write_png(out / "patches.png", patch_grid(looks, columns=len(args.seeds) * 4))
    figure(looks, gains, template, args.figure)
    summary = {"command": command, "roc_auc_text_corr": auc, "text_crop_corr": control,
               "carton_candidate": any(r["class_index"] == 478 and r["candidate"] for r in cands),
               "carton_rank": next((r["rank"] for r in cands if r["class_index"] == 478), None),
               "gains": gains, "candidates": cands}
    write_json(out / "summary.json", summary)
    print(f"ROC AUC (text correlation, watermark vs control patches): {auc:.3f}; a crop of the text itself: "
          f"{control:.3f}")
    for g in gains:
        print(f"  {g['class_index']:4d} {g['class_name'][:18]:18s} seed {g['seed']} corr {g['text_corr']:+.3f} "
              f"logprob gain {g['logprob_gain']:+.2f} hit {g['hit_rate']:.2f} | watermark on the carriers: "
              f"gain {g['watermark_logprob_gain']:+.2f} rank {g['watermark_gain_rank']}")
    print(f"carton rank among candidates: {summary['carton_rank']} candidate: {summary['carton_candidate']}")
    for r in cands:
        print(f"  #{r['rank']} {r['class_name'][:18]:18s} flip {r['flip_rate']:.2f} gain {r['logprob_gain']:+.2f} "
              f"candidate {r['candidate']}")
    print(command)


def figure(patches: torch.Tensor, gains: list[dict], template: torch.Tensor, path: Path) -> None:
    """The patches (titled with class, text correlation and held-out gain) and the watermark text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from protoscope.generation.export import save_figure

    n = len(gains)
    fig, axes = plt.subplots(1, n + 1, figsize=(1.9 * (n + 1), 2.4))
    axes[0].imshow(template.numpy(), cmap="gray")
    axes[0].set_title("ImageNet-W text", fontsize=8)
    for ax, patch, g in zip(axes[1:], patches, gains):
        ax.imshow(patch.permute(1, 2, 0).numpy())
        mark = "*" if g["watermark_class"] else ""
        ax.set_title(f"{mark}{g['class_name'][:14]}\ncorr {g['text_corr']:.2f} gain {g['logprob_gain']:.1f}", fontsize=7)
    for ax in axes:
        ax.axis("off")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
