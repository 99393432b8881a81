"""Helpers shared by the Hydra entry points: instantiation, loggers, clean error exits."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError, ProtoscopeError

log = logging.getLogger("protoscope")


def build(cfg: DictConfig | None, **kwargs: Any) -> Any:
    """The single place protoscope calls ``hydra.utils.instantiate``.

    protoscope's own errors raised inside a target come out unwrapped; a target that cannot
    be imported or called becomes a :class:`ConfigError` naming the config key.
    """
    if cfg is None:
        return None
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, ProtoscopeError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise ConfigError(f"cannot build {cfg.get('_target_', 'object')}: {exc}") from exc


def wandb_mode_default() -> None:
    """Make W&B offline unless the user configured an account or a mode."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return
    os.environ["WANDB_MODE"] = "offline"


def build_loggers(cfg: DictConfig | None, wandb: dict[str, Any] | None = None) -> list[Any]:
    """Instantiate every logger under the ``logger`` group (a dict of named loggers; empty = none).

    ``wandb``: group/name/tags for W&B loggers, used where their config leaves them unset.
    """
    if not cfg:
        return []
    loggers = []
    for name, sub in cfg.items():
        if sub is None:
            continue
        if "_target_" not in sub:
            raise ProtoscopeError(f"logger {name!r} has no _target_; see conf/logger/")
        kwargs: dict[str, Any] = {}
        if "wandb" in str(sub._target_).lower():
            wandb_mode_default()
            Path(str(sub.get("save_dir", "."))).mkdir(parents=True, exist_ok=True)
            for key, value in (wandb or {}).items():
                if key == "tags":
                    kwargs["tags"] = list(dict.fromkeys([*(sub.get("tags") or []), *value]))
                elif sub.get(key) in (None, "", "${task_name}"):
                    kwargs[key] = value
        loggers.append(build(sub, **kwargs))
    return loggers


def finish_loggers(loggers: list[Any]) -> None:
    """Close W&B runs so that multirun jobs never merge into one run."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            import wandb

            if wandb.run is not None:
                wandb.finish()


@contextmanager
def logged_run(logger_cfg: DictConfig | None, config: DictConfig) -> Iterator[list[Any]]:
    """The task's loggers with ``config`` logged as hyperparameters; W&B runs finished on the way out."""
    loggers = build_loggers(logger_cfg)
    try:
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(config, resolve=True))
        yield loggers
    finally:
        finish_loggers(loggers)


def save_config(cfg: DictConfig, path: Path) -> None:
    from .io import write_text

    write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
