"""``protoscope-lucent``: the Lucent library's own feature visualisation of the same model and classes,
written as a run folder that ``protoscope-evaluate`` reads (see conf/lucent.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from .cli import run_cli, task_errors
from .paths import conf_dir


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="lucent")
@task_errors
def hydra_main(cfg: DictConfig) -> None:
    from .baselines.lucent import run_lucent

    run_lucent(cfg)


def main() -> None:
    from .validation import check_classes

    run_cli("lucent", hydra_main, lambda cfg, multirun, elsewhere: check_classes(cfg))


if __name__ == "__main__":
    main()
