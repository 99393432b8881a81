"""Planted shortcuts: marks, planting them into training data, and scoring how prototypes express them."""

from .detect import DetectionScores, detection_scores, mark_correlation, neutral_baseline, paste_effect, shifted
from .marks import MARK_KINDS, Mark, load_mark, make_mark, square_mark, stripes_mark
from .plant import Planting, ShortcutPlan, plant, shortcut_accuracies, shortcut_plan

__all__ = [
    "DetectionScores", "detection_scores", "mark_correlation", "neutral_baseline", "paste_effect", "shifted",
    "MARK_KINDS", "Mark", "load_mark", "make_mark", "square_mark", "stripes_mark",
    "Planting", "ShortcutPlan", "plant", "shortcut_accuracies", "shortcut_plan",
]
