"""``protoscope-audit``: what one model learned, with no data (conf/audit.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ..cli import run_cli, task_errors
from ..paths import conf_dir


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="audit")
@task_errors
def hydra_main(cfg: DictConfig) -> None:
    from .run import run_audit

    run_audit(cfg)


def validate(cfg: DictConfig, multirun: bool = False, elsewhere: bool = False) -> None:
    """Before start-up: the tasks exist and have their inputs; photos come with a reference."""
    from .tasks import check_inputs

    check_inputs(cfg)


def main() -> None:
    run_cli("audit", hydra_main, validate)


if __name__ == "__main__":
    main()
