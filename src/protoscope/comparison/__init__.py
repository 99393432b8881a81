"""Comparing two models with the same classes through their prototypes (``protoscope-compare``)."""

from .core import TERMS, Comparison, Side, align, check_same_classes, compare_sides, natural_cross_scores
from .sides import generated_side, load_sides, run_side, side_generation_config
from .task import CompareOutput, mark_detection, run_compare
from .writers import log_comparison, write_comparison

__all__ = [
    "TERMS", "Comparison", "Side", "align", "check_same_classes", "compare_sides", "natural_cross_scores",
    "generated_side", "load_sides", "run_side", "side_generation_config",
    "CompareOutput", "mark_detection", "run_compare", "log_comparison", "write_comparison",
]
