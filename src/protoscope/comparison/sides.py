"""The two sides of a comparison: prototypes generated now (same recipe, rows and seeds) or an existing run."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from ..errors import ConfigError, RunInterrupted
from ..evaluation.inputs import check_run_classes, load_run
from ..models import load_model
from .core import Side, check_same_classes

log = logging.getLogger("protoscope")

# Keys of conf/compare.yaml that are not generation settings.
COMPARE_KEYS = ("model_a", "model_b", "label_a", "label_b", "run_a", "run_b", "weights", "detect", "mark",
                "batch_size")


def side_generation_config(cfg: DictConfig, key: str, out_dir: Path) -> DictConfig:
    """The ``protoscope-generate`` config of side ``key`` (``a``/``b``): the compare config's generation
    settings with ``model_<key>`` as the model, writing to ``out_dir``, without loggers."""
    gen = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(gen):
        gen.model = cfg[f"model_{key}"]
        gen.paths.output_dir = str(out_dir)
        gen.logger = None
        gen.task_name = "generate"
        gen.tag = f"{cfg.get('tag', 'custom')}/{cfg[f'label_{key}']}"
        for k in COMPARE_KEYS:
            gen.pop(k, None)
    return gen


def is_complete(run_dir: Path, gen: DictConfig) -> bool:
    """A finished generation of exactly this config is in ``run_dir`` (prototypes.pt is written last)."""
    cfg_file = run_dir / "config.yaml"
    return (run_dir / "prototypes.pt").is_file() and cfg_file.is_file() \
        and cfg_file.read_text() == OmegaConf.to_yaml(gen, resolve=True)


def generated_side(cfg: DictConfig, key: str, out_dir: Path) -> Side:
    """Generate side ``key``'s prototypes into ``out_dir/<key>`` (skipped when already complete there)."""
    from ..generation.pipeline import run_generation

    run_dir = out_dir / key
    gen = side_generation_config(cfg, key, run_dir)
    label = str(cfg[f"label_{key}"])
    if is_complete(run_dir, gen):
        log.info("%s: prototypes already generated in %s", label, run_dir)
    else:
        for stale in ("prototypes.pt", "run.json"):  # from another config: never mistaken for this one
            (run_dir / stale).unlink(missing_ok=True)
        log.info("%s: generating prototypes with model %s into %s", label, gen.model.get("name"), run_dir)
        try:
            run_generation(gen)
        except RunInterrupted as exc:  # the command that resumes is this compare, not a generate of one side
            from ..generation.pipeline import resume_hint

            raise RunInterrupted(exc.signum, exc.step, resume_hint(out_dir, "protoscope-compare")) from None
    return run_side(run_dir, label, gen.model)


def run_side(run_dir: str | Path, label: str, model_cfg: DictConfig | None = None) -> Side:
    """The prototypes of a ``protoscope-generate`` run folder and its model (``model_cfg`` or its config.yaml)."""
    images = load_run(run_dir, label)
    if model_cfg is None:
        if images.config is None or images.config.get("model") is None:
            raise ConfigError(f"{run_dir} has no config.yaml with a model: give a protoscope-generate run folder")
        model_cfg = images.config.model
    classifier = load_model(model_cfg)
    check_run_classes(images, classifier)
    info = {"model": str(model_cfg.get("name")), "checkpoint": str(model_cfg.get("checkpoint"))}
    return Side(label, classifier, images.images, images.class_ids, images.seeds, str(run_dir), info)


def load_sides(cfg: DictConfig, out_dir: Path) -> tuple[Side, Side]:
    """Side A and B: an existing run (``run_a``/``run_b``) or prototypes generated now."""
    if str(cfg.label_a) == str(cfg.label_b):
        raise ConfigError(f"label_a and label_b are both {cfg.label_a!r}: give the two models different labels")
    for key in ("a", "b"):
        if not cfg.get(f"run_{key}"):
            m = cfg[f"model_{key}"]
            log.info("model %s (%s): %s, checkpoint %s", key.upper(), cfg[f"label_{key}"], m.get("name"), m.get("checkpoint"))
    model = cfg.get("model")
    if model is not None and all(model.get("name") == cfg[f"model_{k}"].get("name") and model != cfg[f"model_{k}"]
                                 for k in ("a", "b")):
        log.warning("settings under model.* are not used by protoscope-compare: its two models are model_a and "
                    "model_b (e.g. model_a.checkpoint=..., model_b.checkpoint=...)")
    runs = {key: run_side(cfg[f"run_{key}"], str(cfg[f"label_{key}"])) for key in ("a", "b") if cfg.get(f"run_{key}")}
    models = {key: runs[key].classifier if key in runs else load_model(cfg[f"model_{key}"]) for key in ("a", "b")}
    check_same_classes(models["a"], models["b"], str(cfg.label_a), str(cfg.label_b))  # before generating anything
    a, b = (runs[key] if key in runs else generated_side(cfg, key, out_dir) for key in ("a", "b"))
    return a, b
