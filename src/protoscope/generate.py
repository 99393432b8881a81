"""``protoscope-generate``: class prototypes from a Hydra config (see conf/generate.yaml)."""

from __future__ import annotations

import math

import hydra
from omegaconf import DictConfig

from .cli import run_cli, task_errors
from .paths import conf_dir


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="generate")
@task_errors
def hydra_main(cfg: DictConfig) -> float:
    """Generate, and return the sweep metric (what a Hydra sweeper such as Optuna optimises)."""
    from .generation.pipeline import run_generation
    from .validation import check_runtime, sweep_value

    check_runtime(cfg)
    result = run_generation(cfg)
    return sweep_value(cfg, result.metrics) if result is not None else math.nan


def main() -> None:
    from .validation import validate_generate

    run_cli("generate", hydra_main, validate_generate)


if __name__ == "__main__":
    main()
