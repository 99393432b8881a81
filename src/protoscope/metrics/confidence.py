"""How strongly a classifier predicts each row's target class(es)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TargetScores:
    """Per row: weighted target logit, summed target probability and rank (1 = top-1)."""

    logit: Tensor
    prob: Tensor
    rank: Tensor


def target_scores(logits: Tensor, weights: Tensor, primary: Tensor) -> TargetScores:
    """``logits [R,K]``, target ``weights [R,K]`` (rows sum to 1), ``primary [R]``: the class ranked.

    The probability sums over every class with a non-zero weight (a hybrid's classes together).
    """
    logits = logits.detach().double()
    weights = weights.to(logits)
    rows = torch.arange(len(logits), device=logits.device)
    own = logits[rows, primary.to(logits.device)]
    return TargetScores(
        logit=(logits * weights).sum(-1),
        prob=(logits.softmax(-1) * (weights > 0)).sum(-1),
        rank=(logits > own[:, None]).sum(-1) + 1,
    )
