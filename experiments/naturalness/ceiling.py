#!/usr/bin/env python
"""How far can a data-free prior go on EfficientNet-Lite0? Score class-agnostic paths as if they were prototypes.

    python experiments/naturalness/ceiling.py [--part test] [--classes 10] [reference.root=<Imagenette copy>]

``experiment=natural`` pulls a prototype towards the model's own batch-norm running statistics: the mean of every
batch-norm input over the training data. Those statistics imply the data-mean of most path layers: ``_bn0`` is a
batch-norm output (its data-mean is the norm's bias beta), each MBConv block ends in a batch norm (data-mean beta,
plus the block's input on a residual block) and ``_conv_head`` feeds ``_bn1`` (data-mean: its running mean). This
script scores, for each class, against the class's photos of ``--part`` (the percentile of
``protoscope-evaluate``, leave-one-out for the photos):

- **implied**: the path those statistics imply (the logits taken from the photos of the other classes): the best
  a prototype that matched the statistics exactly, with nothing class-specific, would score;
- **other classes' photos**: the mean path of the photos of the other classes of the sample: a generic photo of
  the dataset, with nothing of this class;
- **one photo of another class**: each photo of the other classes scored on its own (the mean of their
  percentiles): how a real photo that is not of this class fares, the yardstick for a prototype;
- **bundled photos**: the mean path of the 7 photos shipped with scikit-image, scikit-learn and matplotlib
  (``reference=bundled_photos``, centre crops; a cat, a coffee cup, a rocket, ...): generic photos from outside
  the dataset.

It also lists, per path layer, how much channel order the statistics carry: the spread of beta against gamma, and
the Spearman correlation of each class-agnostic path with the class mean. Writes ``lite0_ceiling_<part>_<K>classes.md``
next to itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from protoscope.metrics.percentile import natural_percentile
from protoscope.metrics.similarity import spearman
from protoscope.studies.tables import markdown_table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import IMAGENETTE, public  # noqa: E402  (the naturalness table's classes and command printing)


def implied_path(network: torch.nn.Module, layers: Sequence[str], fallback: dict[str, Tensor]) -> dict[str, Tensor]:
    """The data-mean path that Lite0's batch-norm statistics imply (``fallback`` for a layer they do not decide)."""
    modules = dict(network.named_modules())
    out: dict[str, Tensor] = {}
    previous: Tensor | None = None
    for layer in layers:
        if layer == "_bn0":
            value = modules["net._bn0"].bias.detach().float()
        elif layer.startswith("_blocks."):
            block = modules[f"net.{layer}"]
            value = modules[f"net.{layer}._bn2"].bias.detach().float().clone()
            args = block._block_args
            residual = args.id_skip and args.stride in (1, [1], [1, 1]) and args.input_filters == args.output_filters
            if residual and previous is not None:
                value = value + previous
        elif layer == "_conv_head":
            value = modules["net._bn1"].running_mean.detach().float()
        else:
            value = fallback[layer][0]
        out[layer] = value[None]
        previous = value
    return out


def bundled_path(classifier: Any) -> dict[str, Tensor]:
    """The mean path of the photos that ship with scikit-image, scikit-learn and matplotlib (centre crops)."""
    from protoscope.evaluation.core import forward_paths
    from protoscope.reference.bundled import BundledPhotosSource
    from protoscope.reference.preprocess import convert_channels, resize_center_crop

    source = BundledPhotosSource()
    images = torch.stack([convert_channels(resize_center_crop(source.photo(k), classifier.input_size),
                                           classifier.channels).clamp(0, 1) for k in source.photos])
    paths, _ = forward_paths(classifier, images, progress=False)
    return {l: p.mean(0, keepdim=True) for l, p in paths.items()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="test", choices=["val", "test"])
    ap.add_argument("--classes", type=int, default=10, help="score the first K classes (the generic photos: all 10)")
    args, reference = ap.parse_known_args(argv)
    if not any(r.startswith("reference.root=") for r in reference) and not os.environ.get("PROTOSCOPE_IMAGENETTE_ROOT"):
        print("ceiling: give reference.root=<Imagenette copy> or set $PROTOSCOPE_IMAGENETTE_ROOT", file=sys.stderr)
        return 2
    from hydra import compose, initialize_config_dir

    from protoscope.models import load_model
    from protoscope.paths import conf_dir
    from protoscope.reference import build_reference

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("generate", ["reference=imagenette", "reference.max_per_class=500",
                                   f"reference.part={args.part}", *reference])
    classifier = load_model(cfg.model)
    every = [classifier.class_names.index(n) for n in IMAGENETTE]
    ref = build_reference(cfg.reference, classifier, every)
    layers = list(ref.layer_names)
    bundled = bundled_path(classifier)
    rows, per_layer = [], {l: ([], []) for l in layers}
    sums = {f"{k}/{m}": [] for k in ("implied", "others", "single", "bundled") for m in ("spearman", "l1")}
    for c in every[:args.classes]:
        others = {l: torch.cat([ref.paths[o][l] for o in every if o != c]).mean(0, keepdim=True) for l in layers}
        implied = implied_path(classifier.network, layers, others)
        row = [classifier.class_names[c]]
        single = {l: torch.cat([ref.paths[o][l] for o in every if o != c]) for l in layers}
        for name, path in (("implied", implied), ("others", others), ("single", single), ("bundled", bundled)):
            res = natural_percentile(ref.paths[c], path, ["spearman", "l1"])
            for m in ("spearman", "l1"):
                value = float(res.percentile[m].mean())
                sums[f"{name}/{m}"].append(value)
                row.append(f"{value:.1f}")
        rows.append(row)
        for l in layers:
            per_layer[l][0].append(float(spearman(implied[l], ref.means[c][l][None])[0]))
            per_layer[l][1].append(float(spearman(others[l], ref.means[c][l][None])[0]))
    rows.append(["mean", *(f"{statistics.mean(v):.1f}" for v in sums.values())])
    modules = dict(classifier.network.named_modules())
    layer_rows = []
    for l in layers:
        bn = modules.get("net._bn0" if l == "_bn0" else f"net.{l}._bn2")
        ratio = f"{float(bn.bias.abs().mean() / bn.weight.abs().mean()):.4f}" if bn is not None else "-"
        layer_rows.append([l, ratio, f"{statistics.mean(per_layer[l][0]):.2f}", f"{statistics.mean(per_layer[l][1]):.2f}"])
    shown = public(sys.argv[1:] if argv is None else list(argv))
    lines = [f"# EfficientNet-Lite0: what class-agnostic paths score ({args.part} part, {args.classes} classes)", "",
             f"Generated by `{('experiments/naturalness/ceiling.py ' + shown).strip()}`. "
             "Photos: reference=imagenette (the machine's "
             f"copy), the {args.part} part. Percentiles as in the naturalness table (layer-mean, among the class's "
             "photos). implied: the path the model's batch-norm statistics imply (no photo); other classes: the mean "
             f"path of the photos of the other {len(every) - 1} classes (nothing of this class); one photo of another class: "
             "each such photo scored alone, the mean of their percentiles; bundled photos: the mean "
             "path of the 7 photos shipped with scikit-image, scikit-learn and matplotlib (none of these classes).", "",
             markdown_table(["class", "implied Spearman pct", "implied L1 pct", "other classes Spearman pct",
                             "other classes L1 pct", "one photo of another class Spearman pct",
                             "one photo of another class L1 pct", "bundled photos Spearman pct", "bundled photos L1 pct"],
                            rows),
             "Per path layer: abs(beta) / abs(gamma) (means over channels) of the batch norm that ends it "
             "(`-`: not a batch-norm output) and the "
             "Spearman correlation of each class-agnostic path with the class mean (mean over the classes).", "",
             markdown_table(["layer", "mean abs(beta) / mean abs(gamma)", "implied Spearman", "other classes Spearman"],
                            layer_rows)]
    dest = HERE / f"lite0_ceiling_{args.part}_{args.classes}classes.md"
    dest.write_text("\n".join(lines))
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
