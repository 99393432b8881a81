"""``protoscope-train``: train a small classifier whose checkpoint the ``model`` config group loads.

    protoscope-train                                   # SmallCNN on Fashion-MNIST -> <models folder>/fashion_cnn-<hash>.pt
    protoscope-train train_data=image_folder train_data.root=/data/pets save_to=/tmp/pets.pt

The run folder's run.json records the training; started again on a folder with its completed training
it skips (same training recipe) or refuses (another one).
"""

from __future__ import annotations

from omegaconf import DictConfig

from .cli import run_cli, task_errors
from .models.store import training_recipe
from .recorded import recorded


@recorded("train", training_recipe)
def task(cfg: DictConfig) -> float:
    """Train and return the test accuracy (the value a Hydra sweeper would optimise)."""
    from .training import train

    return float(train(cfg).metrics["test_accuracy"])


@task_errors
def run(cfg: DictConfig) -> float:
    return task(cfg)


def main() -> None:
    """Console entry point (config: ``conf/train.yaml``)."""
    import hydra

    from .paths import conf_dir

    run_cli("train", hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")(run))


if __name__ == "__main__":
    main()
