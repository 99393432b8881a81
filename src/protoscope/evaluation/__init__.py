"""Evaluation of prototypes (or any images) against natural-image reference statistics.

``evaluate_prototypes`` scores images; ``write_evaluation`` writes tables, a markdown summary and
plots; ``load_run`` / ``load_image_folder`` read a ``protoscope-generate`` run or a folder of images;
``run_evaluation`` is the ``protoscope-evaluate`` task.
"""

from .core import DEFAULT_EVAL_MEASURES, EvaluationResult, evaluate_prototypes, forward_paths
from .inputs import ImageSet, load_image, load_image_folder, load_run
from .summary import summary_markdown
from .task import EvaluationOutput, choose_reference, run_evaluation
from .writers import log_evaluation, natural_stats, summary_scalars, write_evaluation

__all__ = [
    "DEFAULT_EVAL_MEASURES", "EvaluationResult", "evaluate_prototypes", "forward_paths",
    "ImageSet", "load_image", "load_image_folder", "load_run", "summary_markdown",
    "log_evaluation", "natural_stats", "summary_scalars", "write_evaluation",
    "EvaluationOutput", "choose_reference", "run_evaluation",
]

