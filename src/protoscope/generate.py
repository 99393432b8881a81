"""``protoscope-generate``: class prototypes from a Hydra config (see conf/generate.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from .hydra_utils import clean_errors
from .paths import conf_dir
from .pipeline import run_generation


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="generate")
@clean_errors
def main(cfg: DictConfig) -> None:
    run_generation(cfg)


if __name__ == "__main__":
    main()
