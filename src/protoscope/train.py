"""``protoscope-train``: train a small classifier whose checkpoint the ``model`` config group loads.

    protoscope-train                                   # SmallCNN on Fashion-MNIST -> <models folder>/fashion_cnn-<hash>.pt
    protoscope-train train_data=image_folder train_data.root=/data/pets save_to=/tmp/pets.pt
"""

from __future__ import annotations

from omegaconf import DictConfig

from .cli import run_cli, task_errors


@task_errors
def run(cfg: DictConfig) -> float:
    """Train and return the test accuracy (the value a Hydra sweeper would optimise)."""
    from .training import train

    return float(train(cfg).metrics["test_accuracy"])


def main() -> None:
    """Console entry point (config: ``conf/train.yaml``)."""
    import hydra

    from .paths import conf_dir

    run_cli("train", hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")(run))


if __name__ == "__main__":
    main()
