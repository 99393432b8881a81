"""Does the model read a patch as it reads a mark? Agreement of their activation-path changes.

A patch prototype can carry a mark's features without looking like the mark to the eye (or to a pixel
correlation). Here each is judged by what it does to the model: pasted on the same carriers, the patch changes
the activation path (every hidden layer's output, reduced to one vector per image by the model's
:class:`~protoscope.models.reduce.Reduction`: position-free for convolutional layers) by ``delta_patch[l]``, the
mark by ``delta_mark[l]`` (means over carriers and placements). The agreement is the mean over hidden layers of
their cosine similarity, in [-1, 1], after the direction of the mean change of all the patches scored together is
taken out of both (what any pasted patch does is not agreement). The logits are left out: sharing a class is what
the patch was made for, the question is whether it gets there the mark's way. It is the paper's activation path
(:mod:`protoscope.metrics.similarity`) applied to the change an edit causes instead of to an image. Score a
control mark too: on EfficientNet-Lite0 the patches of the ImageNet-W classes agree with any pasted mark
(experiments/audit/patches_results.md).
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from ..models import Classifier
from ..models.classifier import LOGITS
from ..models.hooks import record_activations
from ..shortcuts.marks import MarkKind
from .patches import grid_positions, pasted_batches


def hidden_layers(classifier: Classifier) -> list[str]:
    """The classifier's path layers without the logits."""
    return [n for n in classifier.layer_names if n != LOGITS]


@torch.no_grad()
def mean_path(classifier: Classifier, batches: Iterator[torch.Tensor], layers: list[str]) -> dict[str, torch.Tensor]:
    """Layer -> ``[C_l]`` float64 mean of the reduced activations over all images of ``batches``."""
    total: dict[str, torch.Tensor] = {}
    count = 0
    device = classifier.network.mean.device
    with record_activations(classifier.network, layers, classifier.reduction) as store:
        for images in batches:
            classifier.network(images.to(device))
            for name in layers:
                total[name] = total.get(name, 0) + store[name].double().sum(0).cpu()
            count += len(images)
    return {name: value / count for name, value in total.items()}


def patch_changes(classifier: Classifier, patches: torch.Tensor, carriers: torch.Tensor, per_side: int = 3,
                  opacity: float = 1.0, batch: int = 32) -> dict[str, torch.Tensor]:
    """Layer -> ``[R, C_l]``: the mean change of the path when patch r is pasted on ``carriers`` at
    ``per_side``² evenly spread positions. Compute it once to compare the patches with several marks."""
    layers = hidden_layers(classifier)
    before = mean_path(classifier, iter(carriers.split(batch)), layers)
    positions = grid_positions(classifier.input_size, patches.shape[-1], per_side)
    rows = [mean_path(classifier, pasted_batches(patch[None], carriers, positions, opacity, batch), layers)
            for patch in patches]
    return {n: torch.stack([r[n] - before[n] for r in rows]) for n in layers}


def mark_change(classifier: Classifier, carriers: torch.Tensor, mark: MarkKind, batch: int = 32,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """Layer -> ``[C_l]``: the mean change of the path when ``mark`` is pasted on ``carriers`` as its kind
    places it (random kinds draw from a generator seeded with ``seed``)."""
    layers = hidden_layers(classifier)
    before = mean_path(classifier, iter(carriers.split(batch)), layers)
    marked = mark.paste(carriers, torch.Generator().manual_seed(seed))
    return {n: v - before[n] for n, v in mean_path(classifier, iter(marked.split(batch)), layers).items()}


def agreement(changes: dict[str, torch.Tensor], towards_mark: dict[str, torch.Tensor],
              remove_common: bool = True) -> torch.Tensor:
    """``[R]`` mean over layers of the cosine similarity of each patch's change (:func:`patch_changes`) and
    the mark's (:func:`mark_change`). ``remove_common`` (with two or more patches): both changes without their
    component along the mean change of all the patches, so that what any pasted patch does (a textured square
    appears) is not agreement; a direction, not an amount, so a faint mark is compared as fairly as a strong
    one."""
    scores = []
    for name, change in changes.items():
        mark_change = towards_mark[name]
        if remove_common and len(change) > 1:
            common = F.normalize(change.mean(0), dim=0)
            change = change - (change @ common)[:, None] * common
            mark_change = mark_change - (mark_change @ common) * common
        scores.append(F.cosine_similarity(change, mark_change[None], dim=1))
    return torch.stack(scores, 1).mean(1).float() if scores else torch.empty(0)


def path_agreement(classifier: Classifier, patches: torch.Tensor, carriers: torch.Tensor, mark: MarkKind,
                   per_side: int = 3, opacity: float = 1.0, remove_common: bool = True, batch: int = 32,
                   seed: int = 0) -> torch.Tensor:
    """``[R]``: :func:`agreement` of the patches' and the mark's path changes on ``carriers``."""
    return agreement(patch_changes(classifier, patches, carriers, per_side, opacity, batch),
                     mark_change(classifier, carriers, mark, batch, seed), remove_common)
