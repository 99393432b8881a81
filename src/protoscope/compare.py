"""``protoscope-compare``: how differently two models see each class, from their prototypes (conf/compare.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from .comparison import run_compare
from .hydra_utils import clean_errors
from .paths import conf_dir


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="compare")
@clean_errors
def main(cfg: DictConfig) -> None:
    run_compare(cfg)


if __name__ == "__main__":
    main()
