"""``protoscope-report``: one report of a sweep or study (conf/report.yaml).

    protoscope-report sweep_dir=outputs/generate/multirun/<time>
    protoscope-report sweep_dir='[outputs/studies/lr/<time>,outputs/studies/tv/<time>]' classes='[Bag,Sneaker]'
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from .cli import run_cli, task_errors
from .paths import conf_dir


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="report")
@task_errors
def hydra_main(cfg: DictConfig) -> None:
    from .studies.report import run_report

    run_report(cfg)


def validate(cfg: DictConfig, multirun: bool, elsewhere: bool = False) -> None:
    from pathlib import Path

    from omegaconf import OmegaConf

    from .errors import ConfigError

    roots = cfg.sweep_dir if OmegaConf.is_list(cfg.sweep_dir) else [cfg.sweep_dir]
    for root in roots:
        if not Path(str(root)).expanduser().is_dir():
            raise ConfigError(f"sweep_dir={root} is not a folder: give a multirun folder "
                              "(outputs/generate/multirun/<time>), a study folder or run folders")


def main() -> None:
    run_cli("report", hydra_main, validate)


if __name__ == "__main__":
    main()
