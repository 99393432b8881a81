"""``protoscope-evaluate``: score prototypes (or any images) against natural images (conf/evaluate.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from .cli import run_cli, task_errors
from .paths import conf_dir


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="evaluate")
@task_errors
def hydra_main(cfg: DictConfig) -> None:
    from .evaluation import run_evaluation

    run_evaluation(cfg)


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
