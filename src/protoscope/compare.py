"""``protoscope-compare``: how differently two models see each class, from their prototypes (conf/compare.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from .cli import run_cli, task_errors
from .paths import conf_dir


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="compare")
@task_errors
def hydra_main(cfg: DictConfig) -> None:
    from .comparison import run_compare

    run_compare(cfg)


def main() -> None:
    run_cli("compare", hydra_main)


if __name__ == "__main__":
    main()
