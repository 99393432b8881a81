"""One kind of term for everything the optimisation minimises, composed by arithmetic.

A :class:`Term` maps the step's :class:`~protoscope.generation.context.StepContext` to a per-row loss ``[R]``
(lower is better) and names the layers whose activations it reads (:meth:`Term.layers`). Terms compose
with ``+``, ``-``, unary ``-`` and scalar ``*`` / ``/`` into a :class:`Sum`, which reads the union of
its parts' layers and stays per row: a batch of independent rows is never collapsed to one number, so
rows can be chunked and sharded. An antitype is a negated target, a hybrid a sum of targets, a recipe
a target plus weighted penalties::

    loss = Channel("stage2", 3) + 0.01 * TotalVariation()
"""

from __future__ import annotations

from numbers import Real
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch
from torch import nn

from ..generation.context import StepContext

if TYPE_CHECKING:
    from ..models import Classifier


class Term(nn.Module):
    """A per-row loss: ``forward(ctx) -> [R]``; composes by ``+``, ``-`` and scalar ``*``."""

    #: True when the term reads the inputs of the network's batch-norm layers (``ctx.bn_inputs``).
    needs_bn_inputs = False
    #: What a row's target is to this term (``class``, ``channel``, ``neuron``, ``direction``, ``layer``);
    #: None for a term without one (a penalty). See :func:`~protoscope.generation.targets.target_term`.
    target_kind: str | None = None

    def fixed_target(self) -> int | None:
        """The target the term fixes itself (``Channel(layer, 7)``: 7); None when it reads each row's own
        target from ``ctx.targets``."""
        return None

    def describe_target(self, index: int) -> str:
        """A target of this term in words, e.g. ``channel 7 of stage2``."""
        return f"{self.target_kind} {index}"

    def layers(self, classifier: "Classifier") -> list[str]:
        """Module names (of ``classifier.network.net``; ``logits`` for the output) whose outputs it reads."""
        return []

    def forward(self, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    # --- arithmetic -------------------------------------------------------------------------
    def __add__(self, other: "Term") -> "Sum":
        if not isinstance(other, Term):
            return NotImplemented
        return Sum([(1.0, self), (1.0, other)])

    def __radd__(self, other: object) -> "Term":
        if isinstance(other, Real) and other == 0:  # sum(terms) starts from 0
            return self
        return NotImplemented

    def __sub__(self, other: "Term") -> "Sum":
        if not isinstance(other, Term):
            return NotImplemented
        return Sum([(1.0, self), (-1.0, other)])

    def __neg__(self) -> "Sum":
        return Sum([(-1.0, self)])

    def __mul__(self, factor: float) -> "Sum":
        if not isinstance(factor, Real) or isinstance(factor, bool):
            return NotImplemented
        return Sum([(float(factor), self)])

    __rmul__ = __mul__

    def __truediv__(self, factor: float) -> "Sum":
        if not isinstance(factor, Real) or isinstance(factor, bool):
            return NotImplemented
        return Sum([(1.0 / float(factor), self)])


class Sum(Term):
    """``sum_i coef_i * term_i(ctx)``, per row; nested sums are flattened."""

    def __init__(self, parts: Iterable[tuple[float, Term]]) -> None:
        super().__init__()
        coefs: list[float] = []
        terms: list[Term] = []
        for coef, term in parts:
            if isinstance(term, Sum):
                coefs.extend(coef * c for c in term.coefs)
                terms.extend(term.terms)
            else:
                coefs.append(float(coef))
                terms.append(term)
        self.coefs = coefs
        self.terms = nn.ModuleList(terms)

    @property
    def needs_bn_inputs(self) -> bool:  # type: ignore[override]
        return any(t.needs_bn_inputs for t in self.terms)

    def layers(self, classifier: "Classifier") -> list[str]:
        seen: list[str] = []
        for term in self.terms:
            seen.extend(n for n in term.layers(classifier) if n not in seen)
        return seen

    def forward(self, ctx: StepContext) -> torch.Tensor:
        total = None
        for coef, term in zip(self.coefs, self.terms):
            value = coef * term(ctx)
            total = value if total is None else total + value
        return total

    def extra_repr(self) -> str:
        return " + ".join(f"{c:g}*{type(t).__name__}" for c, t in zip(self.coefs, self.terms))


def weighted_terms(terms: Mapping[str, Mapping[str, Any] | None]) -> Term:
    """A recipe from config: ``{name: {term: <Term>, weight: w}}`` -> ``sum(w * term)`` (``conf/objective/terms.yaml``).
    An entry that is null or weighs 0 is left out, so a command line can switch parts off."""
    from ..errors import ConfigError

    parts = []
    for name, entry in terms.items():
        if entry is None or float(entry.get("weight", 1.0)) == 0:
            continue
        term = entry.get("term")
        if not isinstance(term, Term):
            raise ConfigError(f"objective.terms.{name}: give term: {{_target_: protoscope.objectives.<Term>, ...}} "
                              "and weight: <number>")
        parts.append((float(entry.get("weight", 1.0)), term))
    if not parts:
        raise ConfigError("objective=terms: every term is null or weighs 0; give at least one")
    return Sum(parts)
