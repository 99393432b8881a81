"""``protoscope-compare``: how differently two models see each class, from their prototypes (conf/compare.yaml).
The output folder's run.json records the comparison; started again on a folder with its completed
comparison it skips (same recipe) or refuses (another one)."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from .cli import run_cli, task_errors
from .paths import conf_dir
from .recorded import recorded
from .records import RECIPE_KEYS as GENERATE_KEYS

RECIPE_KEYS = (*GENERATE_KEYS, "model_a", "model_b", "run_a", "run_b", "label_a", "label_b", "weights", "mark",
               "detect", "reference")


def recipe(cfg: DictConfig) -> dict[str, Any]:
    """Both sides' generation recipe and models (pinned to their weights files), the weights and the mark."""
    from .models.store import pin_models
    from .records import recipe_of

    pin_models(cfg, ("model_a", "model_b"))
    pin_models(cfg, ("model",), required=False)
    return recipe_of(cfg, RECIPE_KEYS)


@recorded("compare", recipe)
def task(cfg: DictConfig) -> None:
    from .comparison import run_compare

    run_compare(cfg)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="compare")
@task_errors
def hydra_main(cfg: DictConfig) -> None:
    task(cfg)


def main() -> None:
    run_cli("compare", hydra_main)


if __name__ == "__main__":
    main()
