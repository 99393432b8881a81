"""How well a score separates two groups (e.g. shortcut classes from controls)."""

from __future__ import annotations

from typing import Sequence


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """P(score of a positive > score of a negative), ties counted half (the Mann-Whitney ROC AUC); NaN
    without a positive or a negative."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))
