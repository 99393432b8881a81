"""Planted shortcuts: marks (a pluggable kind), planting them into training data, and scoring how images
express them. The submodules keep their names: ``from protoscope.shortcuts import plant`` is the module
:mod:`protoscope.shortcuts.plant`; the planting function is :func:`plant_splits`."""

from .detect import DetectionScores, detection_scores, mark_correlation, neutral_baseline, paste_effect, shifted
from .marks import MARK_KINDS, Mark, MarkKind, load_mark, make_mark, square_mark, stripes_mark
from .plant import Planting, ShortcutPlan, plant_splits, shortcut_accuracies, shortcut_plan

__all__ = [
    "DetectionScores", "detection_scores", "mark_correlation", "neutral_baseline", "paste_effect", "shifted",
    "MARK_KINDS", "Mark", "MarkKind", "load_mark", "make_mark", "square_mark", "stripes_mark",
    "Planting", "ShortcutPlan", "plant_splits", "shortcut_accuracies", "shortcut_plan",
]
