"""``protoscope-lucent``: the Lucent library's own feature visualisation of the same model and classes,
written as a run folder that ``protoscope-evaluate`` reads (see conf/lucent.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from .baselines.lucent import run_lucent
from .hydra_utils import clean_errors
from .paths import conf_dir


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="lucent")
@clean_errors
def main(cfg: DictConfig) -> None:
    run_lucent(cfg)


if __name__ == "__main__":
    main()
