"""``protoscope-evaluate``: score prototypes (or any images) against natural images (conf/evaluate.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from .evaluation import run_evaluation
from .hydra_utils import clean_errors
from .paths import conf_dir


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="evaluate")
@clean_errors
def main(cfg: DictConfig) -> None:
    run_evaluation(cfg)


if __name__ == "__main__":
    main()
