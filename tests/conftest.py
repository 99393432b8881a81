"""Shared test helpers: compose protoscope configs without shelling out."""

from __future__ import annotations

import os

# Tiny test models gain nothing from several threads, and several threads per process stall badly when
# test processes (ddp_spawn ranks, CLI subprocesses) or other jobs share the CPU: one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402
from typing import Sequence

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from protoscope.paths import conf_dir  # noqa: E402

torch.set_num_threads(1)

# This machine's Imagenette val sample (CI clones the repository beside shared/; .ci/run exports the same path):
# reference=imagenette reads it through the variable, as a user's own copy would be.
_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "imagenet-val-sample"
if _SAMPLE.is_dir():
    os.environ.setdefault("PROTOSCOPE_IMAGENETTE_ROOT", str(_SAMPLE))


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts with one intra-op thread, whatever an earlier test's code set (with 2 cores
    shared by another job, 2 threads can run 10x slower)."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

FAST = [
    # The tests of everything but the recipe run the classic one (tv + blur): the default, experiment=natural, is
    # tested where it is the subject (test_vit, test_natural_priors, test_speed); a later experiment=... wins.
    "experiment=classic",
    "model=tiny_cnn",
    "param=pixel",  # the random tiny model needs ~30 Fourier steps before every class logit rises
    "classes=[0,1,2]",
    "schedule.baseline_steps=2",
    "schedule.prototype_steps=10",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=4",
]


def compose_cfg(config_name: str, overrides: Sequence[str], out_dir: Path | None = None) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with overrides; point output paths at ``out_dir``."""
    extra = []
    if out_dir is not None:
        extra = [f"paths.output_dir={out_dir}", f"paths.cache_dir={out_dir}/cache"]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=[*overrides, *extra])


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("PROTOSCOPE_MODELS", str(tmp_path_factory.getbasetemp() / "models"))
