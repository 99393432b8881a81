"""What every console entry point shares: checks before start-up, one-line errors, sweep-safe jobs.

``run_cli(task, hydra_main, validate)`` checks the command line before Hydra and the heavy libraries
start: config-group choices exist (listing the valid ones), keys exist (else "did you mean"),
override values have the type of the setting they replace, mandatory values are set, every number is
in its range (:mod:`protoscope.config_ranges`), ``validate(cfg)`` passes on the composed config, and
torchvision fits torch (:mod:`protoscope.startup`). A problem is one line on stderr and exit status 2.
``task_errors`` wraps the Hydra task: in a single run a protoscope error is one line and exit 2; in a
multirun a failing job is recorded and the sweep goes on. SIGINT/SIGTERM end the process with one line
and 128 + the signal number, after the state is saved where a run can resume.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, OmegaConf

from .resolvers import TASK_GROUPS, group_choices  # importing resolvers also registers the resolvers the configs use
from .config_ranges import check_ranges
from .errors import ConfigError, ProtoscopeError, RunInterrupted
from .paths import conf_dir

log = logging.getLogger("protoscope")
# A command's own checks before start-up: (config, multirun, jobs run on other machines) -> raises ConfigError.
Validator = Callable[[DictConfig, bool, bool], None]
# Flags after which Hydra does something other than run the task (help, config printing, ...).
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
               "--resolve", "--package", "-p", "--version", "--config-path", "-cp", "--config-name", "-cn",
               "--config-dir", "-cd", "--experimental-rerun"}


def print_error(message: str) -> None:
    """One line on stderr, and the same line in the run's log file (never twice on the console)."""
    line = " ".join(str(message).split())
    print(f"protoscope: {line}", file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.LogRecord("protoscope", logging.ERROR, __file__, 0, line, None, None))


def fail(exc: BaseException, code: int = 2) -> None:
    print_error(f"{type(exc).__name__}: {exc}")
    sys.exit(code)


# --- before start-up -------------------------------------------------------------------------------
def _options(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _options(v)]
    return [value]


def check_group_choices(overrides: Iterable[Any]) -> None:
    """Every ``group=option`` names an existing option file (sweeps and multi-select lists included)."""
    for o in overrides:
        group = o.key_or_group
        if group.startswith("hydra") or o.is_delete():
            continue
        choices = group_choices(group)
        if choices is None:
            continue
        values = list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
        for value in values:
            for option in _options(value):
                if option is not None and str(option) not in choices:
                    raise ConfigError(f"{group}={o.get_value_element_as_str()}: there is no {group} {option!r} "
                                      f"(conf/{group}/); choose from: {', '.join(choices)}"
                                      f"{_elsewhere(option, isinstance(value, list))}")


def _elsewhere(option: Any, listed: bool) -> str:
    """Where other groups hold ``option``, e.g. `` (blur is in conf/param_ops/: param_ops=[blur])``, else ''."""
    homes = sorted(p.parent.name for p in conf_dir().glob(f"*/{option}.yaml"))
    fixes = [f"{home}={'[' + str(option) + ']' if listed else option}" for home in homes]
    return f" ({option} is in {', '.join(f'conf/{h}/' for h in homes)}: {' or '.join(fixes)})" if homes else ""


def parse_overrides(texts: list[str]) -> list[Any]:
    """Hydra's parsed overrides of ``texts`` (a grammar error becomes a ConfigError)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(texts)
    except Exception as exc:  # noqa: BLE001 - Hydra's grammar error
        raise ConfigError(f"cannot parse the overrides: {str(exc).splitlines()[0]}") from None


def _split_argv(argv: list[str]) -> tuple[list[str], bool, bool]:
    """(overrides, multirun, info): Hydra's own flags taken out."""
    overrides, multirun, info = [], False, False
    for arg in argv:
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg.split("=", 1)[0] in _INFO_FLAGS:
            info = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides, multirun, info


def _first_value(o: Any) -> str:
    """One override as its sweep's first job sees it (a sweep replaced by its first value)."""
    prefix = "~" if o.is_delete() else "++" if o.is_force_add() else "+" if o.is_add() else ""
    value = next(iter(o.sweep_string_iterator())) if o.is_sweep_override() else o.get_value_element_as_str()
    return f"{prefix}{o.key_or_group}{'@' + o.package if o.package else ''}={value}"


def _first_of_sweeps(overrides: list[Any], groups_only: bool = False) -> list[str]:
    """The (non-Hydra) overrides of a sweep's first job; with ``groups_only`` only config-group choices."""
    return [_first_value(o) for o in overrides if not o.key_or_group.startswith("hydra")
            and (not groups_only or group_choices(o.key_or_group) is not None)]


def compose(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` (no Hydra run, no output folder)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def _composition_error(exc: BaseException) -> ConfigError:
    lines = [line.strip() for e in (exc, exc.__cause__) if e is not None for line in str(e).splitlines() if line.strip()]
    text = " ".join(dict.fromkeys(lines))
    if "is not in struct" in text or "Could not override" in text:
        # Hydra's advice to append with `+` is the wrong fix for a misspelt key: drop it
        text = re.sub(r"To append to your config use \S+\s*", "", text)
        text += " (check the spelling of the setting; `--cfg job` prints every setting)"
    return ConfigError(text or type(exc).__name__)


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    """Every key of ``node``, dotted, at every level (interpolations are not resolved)."""
    out: list[str] = []
    if not isinstance(node, DictConfig):
        return out
    for key in node.keys():
        path = f"{prefix}.{key}" if prefix else str(key)
        out.append(path)
        if not OmegaConf.is_interpolation(node, key) and not OmegaConf.is_missing(node, key):
            out.extend(_dotted_keys(node._get_node(key), path))
    return out


def check_unknown_keys(config_name: str, overrides: list[Any]) -> None:
    """A key or group that the config does not have: one line with the closest names (difflib)."""
    import difflib

    try:
        base = compose(config_name, _first_of_sweeps(overrides, groups_only=True))
    except Exception:  # noqa: BLE001 - a group choice itself fails: the caller reports Hydra's error
        return
    keys = [k for k in _dotted_keys(base) if not k.startswith("hydra")]
    groups = list(TASK_GROUPS.get(config_name, ())) + ["shortcut", "paths"]
    for o in overrides:
        key = o.key_or_group
        if key.startswith("hydra") or o.is_add() or o.is_force_add() or group_choices(key) is not None:
            continue
        if OmegaConf.select(base, key, default="\0missing", throw_on_missing=False,
                            throw_on_resolution_failure=False) != "\0missing":
            continue
        candidates = list(dict.fromkeys(keys + groups))
        near = [k for k in difflib.get_close_matches(key, candidates, n=3, cutoff=0.6) if not k.endswith("_")]
        if "." in key and not near:  # a misspelt group: suggest the group, keep the rest of the key
            head, rest = key.split(".", 1)
            near = [f"{g}.{rest}" for g in difflib.get_close_matches(head, groups + [k for k in keys if "." not in k],
                                                                       n=3, cutoff=0.6)]
        hint = f"did you mean {' or '.join(near)}?" if near else "check its spelling"
        value = o.get_value_element_as_str() if not o.is_delete() else ""
        raise ConfigError(f"{key}{'=' + value if value else ''}: {key} is not a setting of {config_name}: {hint} "
                          "(`--cfg job` prints every setting)")


def check_value_types(config_name: str, overrides: list[Any], composed: DictConfig) -> None:
    """A value override must keep the type of the default it replaces (numbers stay numbers)."""
    try:
        base = compose(config_name, _first_of_sweeps(overrides, groups_only=True))
    except Exception:  # noqa: BLE001 - the full composition succeeded; nothing to compare against
        return
    for o in overrides:
        key = o.key_or_group
        if key.startswith("hydra") or o.is_delete() or group_choices(key) is not None:
            continue
        default = OmegaConf.select(base, key, throw_on_missing=False, throw_on_resolution_failure=False,
                                   default=None)
        value = OmegaConf.select(composed, key, throw_on_missing=False, throw_on_resolution_failure=False,
                                 default=None)
        if isinstance(default, bool) or default is None or value is None:
            continue
        if isinstance(default, (int, float)) and not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={o.get_value_element_as_str()}: {key} must be a number "
                              f"(its default is {default})")


def check_sweep_ranges(overrides: list[Any]) -> None:
    """Every value of a swept numeric setting (``optimizer.lr=0.01,-1``) is in its range, not only the first."""
    from .config_ranges import range_of

    for o in overrides:
        if not o.is_sweep_override() or group_choices(o.key_or_group) is not None:
            continue
        rule = range_of(o.key_or_group)
        for value in o.sweep_iterator() if rule is not None else ():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and (problem := rule.problem(value)):
                raise ConfigError(f"{o.key_or_group}={value} (a value of its sweep): {problem}; "
                                  f"set {o.key_or_group}=<values> in range")


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Keys whose value is ``???``, found without resolving interpolations (some need a Hydra run)."""
    from omegaconf import ListConfig

    out: list[str] = []
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node)) if isinstance(node, ListConfig) else []
    for key in keys:
        path = f"{prefix}.{key}" if prefix else str(key)
        if OmegaConf.is_missing(node, key):
            out.append(path)
        elif not OmegaConf.is_interpolation(node, key):
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                out.extend(_missing_keys(child, path))
    return out


def check_missing(cfg: DictConfig) -> None:
    """Mandatory values (``???``) are set, e.g. ``reference.root`` of ``reference=image_folder``."""
    missing = [k for k in _missing_keys(cfg) if not k.startswith("hydra")]
    if missing:
        key = missing[0]
        raise ConfigError(f"{key} is not set: add {key}=<value> to the command"
                          + (f" (also unset: {', '.join(missing[1:])})" if len(missing) > 1 else ""))


def preflight(config_name: str, argv: list[str], validate: Validator | None) -> None:
    """All checks that need no model and no data: raises ConfigError naming the problem and the fix."""
    overrides_text, multirun, info = _split_argv(argv)
    if info:
        return
    overrides = parse_overrides(overrides_text)
    check_group_choices(overrides)
    first = _first_of_sweeps(overrides)
    try:
        cfg = compose(config_name, first)
    except Exception as exc:  # noqa: BLE001 - composition errors become one line
        check_unknown_keys(config_name, overrides)
        raise _composition_error(exc) from None
    check_value_types(config_name, overrides, cfg)
    check_missing(cfg)
    check_ranges(cfg)
    check_sweep_ranges(overrides)
    if validate is not None:
        elsewhere = multirun and any(o.key_or_group == "hydra/launcher" and "slurm" in str(o.value()) for o in overrides)
        validate(cfg, multirun, elsewhere)  # SLURM jobs: what depends on their machine is checked in each job


def run_cli(config_name: str, hydra_main: Callable[[], Any],
            validate: Validator | None = None) -> None:
    """Check the command line, then hand over to Hydra (``PROTOSCOPE_NO_PREFLIGHT=1`` skips the checks)."""
    from .startup import Interrupted, check_torchvision, install, interrupted_line

    try:  # torch's import runs C++ code that calls back into Python: an exception raised there by a signal
        import torch  # noqa: F401  aborts the process, so import it while a signal still exits at once
    except Exception:  # noqa: BLE001 - a broken torch is reported by the checks below, in one line
        pass
    install(raise_on_signal=True)  # from here on a signal unwinds (finally blocks run), then one line
    try:
        try:
            if not os.environ.get("PROTOSCOPE_NO_PREFLIGHT"):
                _guarded_preflight(config_name, validate)
            check_torchvision()
        except ProtoscopeError as exc:
            fail(exc)
        hydra_main()
    except Interrupted as exc:  # one line on stderr, and in the run's log file when there is one
        print_error(interrupted_line(exc).removeprefix("protoscope: "))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print_error("Interrupted: SIGINT: stopped; run the command again")
        sys.exit(130)


def _guarded_preflight(config_name: str, validate: Validator | None) -> None:
    """``preflight``; a broken torchvision import inside a check becomes the one-line mismatch error."""
    from .startup import check_torchvision, raise_if_signalled

    try:
        preflight(config_name, sys.argv[1:], validate)
    except ProtoscopeError:
        raise
    except Exception as exc:  # noqa: BLE001 - only a torchvision that does not fit torch is explained here
        raise_if_signalled()  # a signal inside a library call, turned into another error
        if "torchvision" not in f"{exc!r}" and "torchvision" not in "".join(_frames(exc)):
            raise
        check_torchvision()
        raise


def _frames(exc: BaseException) -> list[str]:
    import traceback

    return [frame.filename for frame in traceback.extract_tb(exc.__traceback__)]


# --- inside the Hydra task -------------------------------------------------------------------------
def in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except (ImportError, ValueError):
        return False


def task_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Clean exits for a Hydra task (see the module doc). A failed sweep job returns NaN."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        multirun = in_multirun()
        try:
            return task(cfg)
        except RunInterrupted as exc:
            fail(exc, exc.exit_code)
        except ProtoscopeError as exc:
            if os.environ.get("PROTOSCOPE_TRACEBACK"):
                raise
            if not multirun:
                fail(exc)
            print_error(f"job {Path(cfg.paths.output_dir).name} failed: {type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a sweep goes on; the job's log keeps the traceback
            from .startup import raise_if_signalled

            raise_if_signalled()  # a library turned the signal's exception into another one
            if not multirun:
                raise
            log.debug("job failed", exc_info=True)
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.FileHandler):
                    handler.emit(logging.LogRecord("protoscope", logging.ERROR, __file__, 0, "traceback",
                                                   None, sys.exc_info()))
            print_error(f"job {Path(cfg.paths.output_dir).name} failed: {type(exc).__name__}: {exc}")
        return math.nan

    return wrapper
