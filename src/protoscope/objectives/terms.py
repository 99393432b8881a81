"""Class objectives: terms on the logits. ``targets`` [R,K] holds each row's target-class weights (summing
to 1)."""

from __future__ import annotations

import torch

from ..generation.context import StepContext
from .algebra import Term


def probability_variance(logits: torch.Tensor) -> torch.Tensor:
    """L_pv = Var_k softmax(logits)_k per row: zero when every class is equally likely."""
    return logits.softmax(-1).var(-1, unbiased=False)


class Objective(Term):
    """A term on the logits and each row's target classes: ``score(logits, targets) -> [R]``."""

    name = "objective"
    target_kind = "class"

    def forward(self, ctx: StepContext) -> torch.Tensor:
        return self.score(ctx.logits, ctx.targets)

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Logit(Objective):
    """L_c = -logit_c (the paper's objective)."""

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return -(logits * targets).sum(-1)


class LogProb(Objective):
    """-log p(c): raises the target logit and lowers the others."""

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return -(logits.log_softmax(-1) * targets).sum(-1)


class Antitype(Objective):
    """+logit_c: the input the model finds least like class c."""

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (logits * targets).sum(-1)


class Hybrid(Objective):
    """Several classes in one prototype: mean target logit, minus a penalty on their spread
    (``balance`` times the standard deviation of the targets' logits) so no class dominates."""

    def __init__(self, balance: float = 1.0) -> None:
        super().__init__()
        self.balance = float(balance)

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        mean = (logits * targets).sum(-1)
        spread = ((logits - mean.unsqueeze(-1)).pow(2) * targets).sum(-1).clamp_min(1e-12).sqrt()
        return -mean + self.balance * spread


class ProbabilityVariance(Term):
    """L_pv as a term: the paper's equidistant-baseline loss."""

    def forward(self, ctx: StepContext) -> torch.Tensor:
        return probability_variance(ctx.logits)
