"""``protoscope-evaluate``: score prototypes (or any images) against natural images (conf/evaluate.yaml).
The output folder's run.json records the evaluation; started again on a folder with its completed
evaluation it skips (same recipe) or refuses (another one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from .cli import run_cli, task_errors
from .paths import conf_dir
from .recorded import recorded

RECIPE_KEYS = ("run_dir", "images", "mapping", "resize", "label", "baseline_run", "baseline_images",
               "baseline_mapping", "baseline_label", "model", "reference", "measures", "include_logits")


def recipe(cfg: DictConfig) -> dict[str, Any]:
    """What decides an evaluation's numbers: its inputs, model, reference and measures."""
    from .records import recipe_of

    return recipe_of(cfg, RECIPE_KEYS)


def folder(cfg: DictConfig) -> Path:
    from .evaluation.task import evaluation_dir

    return evaluation_dir(cfg)


@recorded("evaluate", recipe, folder)
def task(cfg: DictConfig) -> None:
    from .evaluation import run_evaluation

    run_evaluation(cfg)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="evaluate")
@task_errors
def hydra_main(cfg: DictConfig) -> None:
    task(cfg)


def validate(cfg: DictConfig, multirun: bool, elsewhere: bool = False) -> None:
    """Before start-up: the run folder or image folders exist, and a run's prototypes.pt is sound."""
    from .validation import check_evaluate_folders

    check_evaluate_folders(cfg)  # first: it needs no torch
    from .evaluation.inputs import check_inputs

    check_inputs(cfg)


def main() -> None:
    run_cli("evaluate", hydra_main, validate)


if __name__ == "__main__":
    main()
