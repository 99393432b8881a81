"""``protoscope-lucent``: the Lucent library's own feature visualisation of the same model and classes,
written as a run folder that ``protoscope-evaluate`` reads (see conf/lucent.yaml). The folder's run.json
records the run; started again on a folder with its completed run it skips (same recipe) or refuses."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from .cli import run_cli, task_errors
from .paths import conf_dir
from .recorded import recorded

RECIPE_KEYS = ("model", "classes", "seeds_per_class", "seed", "image_size", "steps", "lr", "reference")


def recipe(cfg: DictConfig) -> dict[str, Any]:
    """What decides a Lucent run's images (the model pinned to its weights file first)."""
    from .models.store import pin_models
    from .records import recipe_of

    pin_models(cfg)
    return recipe_of(cfg, RECIPE_KEYS)


@recorded("lucent", recipe)
def task(cfg: DictConfig) -> None:
    from .baselines.lucent import run_lucent

    run_lucent(cfg)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="lucent")
@task_errors
def hydra_main(cfg: DictConfig) -> None:
    task(cfg)


def main() -> None:
    from .validation import check_classes

    run_cli("lucent", hydra_main, lambda cfg, multirun, elsewhere: check_classes(cfg))


if __name__ == "__main__":
    main()
