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
from .patches import grid_positions, paste


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


def _pasted(carriers: torch.Tensor, patch: torch.Tensor, positions: torch.Tensor, opacity: float,
            batch: int) -> Iterator[torch.Tensor]:
    index = torch.cartesian_prod(torch.arange(len(carriers)), torch.arange(len(positions)))
    for chunk in index.split(batch):
        yield paste(carriers[chunk[:, 0]], patch[None].expand(len(chunk), *patch.shape), positions[chunk[:, 1]],
                    opacity)


def path_changes(classifier: Classifier, patches: torch.Tensor, carriers: torch.Tensor, mark: MarkKind,
                 per_side: int = 3, opacity: float = 1.0, batch: int = 32, seed: int = 0
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(layer -> ``[R, C_l]`` mean change of the path when patch r is pasted on ``carriers`` at ``per_side``²
    evenly spread positions, layer -> ``[C_l]`` mean change when ``mark`` is pasted as its kind places it;
    random kinds draw from a generator seeded with ``seed``)."""
    layers = hidden_layers(classifier)
    split = lambda x: iter(x.split(batch))  # noqa: E731
    before = mean_path(classifier, split(carriers), layers)
    marked = mark.paste(carriers, torch.Generator().manual_seed(seed))
    towards_mark = {n: v - before[n] for n, v in mean_path(classifier, split(marked), layers).items()}
    positions = grid_positions(classifier.input_size, patches.shape[-1], per_side)
    rows = [mean_path(classifier, _pasted(carriers, patch, positions, opacity, batch), layers) for patch in patches]
    return {n: torch.stack([r[n] - before[n] for r in rows]) for n in layers}, towards_mark


def path_agreement(classifier: Classifier, patches: torch.Tensor, carriers: torch.Tensor, mark: MarkKind,
                   per_side: int = 3, opacity: float = 1.0, remove_common: bool = True, batch: int = 32,
                   seed: int = 0) -> torch.Tensor:
    """``[R]`` mean over hidden layers of the cosine similarity of patch r's path change and the mark's
    (:func:`path_changes`). ``remove_common`` (with two or more patches): both changes without their component
    along the mean change of all ``patches``, so that what any pasted patch does (a textured square appears) is
    not agreement; a direction, not an amount, so a faint mark is compared as fairly as a strong one."""
    changes, towards_mark = path_changes(classifier, patches, carriers, mark, per_side, opacity, batch, seed)
    scores = []
    for name, change in changes.items():
        mark_change = towards_mark[name]
        if remove_common and len(change) > 1:
            common = F.normalize(change.mean(0), dim=0)
            change = change - (change @ common)[:, None] * common
            mark_change = mark_change - (mark_change @ common) * common
        scores.append(F.cosine_similarity(change, mark_change[None], dim=1))
    return torch.stack(scores, 1).mean(1).float() if scores else torch.empty(0)
