"""What a console command guards before and around its run: signals at any time, and a torch stack that fits.

Signals. From the moment ``protoscope/__init__`` is imported by a command (``protoscope-<name>`` or
``python -m protoscope.<name>``), SIGINT (Ctrl-C) and SIGTERM end the process with one line and exit
status 128 + the signal number (130, 143): during the start-up imports at once (``os._exit``: nothing
has been written yet), later by raising :class:`Interrupted`, which ``cli.run_cli`` turns into the
line after ``finally`` blocks ran. Runs that can save their state (generate, train) install their own
handler while they optimise (:class:`~protoscope.callbacks.StateCheckpoint`) and end with
:class:`~protoscope.errors.RunInterrupted` naming the resume command instead.

torch/torchvision. ``check_torchvision()`` imports torchvision once, guarded: a build that does not
fit the installed torch (``operator torchvision::nms does not exist``) becomes an
:class:`~protoscope.errors.EnvironmentMismatch` naming both versions and the pip line that fixes it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType

COMMANDS = ("generate", "evaluate", "train", "report", "compare", "lucent")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
_raise_on_signal = False
_received: int | None = None
_STARTED = time.monotonic()  # protoscope's first import: the start of a command's process, near enough


def seconds_since_start() -> float:
    return time.monotonic() - _STARTED


class Interrupted(BaseException):
    """A signal outside a run's own saving handler (a BaseException, so no ``except Exception`` hides it)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _line(signum: int, when: str) -> str:
    return (f"protoscope: Interrupted: {signal.Signals(signum).name} {when}: stopped; nothing resumable was in "
            "progress, run the command again")


def raise_if_signalled() -> None:
    """Inside an ``except`` for another error: if a signal arrived, the error is what a library made of
    :class:`Interrupted` on its way out, so the command still ends with the signal's line and status."""
    if _received is not None:
        raise Interrupted(_received) from None


def _handler(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = signum
    if not _raise_on_signal:
        print(_line(signum, "during start-up"), file=sys.stderr, flush=True)
        os._exit(128 + signum)  # mid-import: no cleanup is worth a traceback
    raise Interrupted(signum)


def install(raise_on_signal: bool = False) -> None:
    """Route SIGINT and SIGTERM to the handler above (main thread only)."""
    global _raise_on_signal
    _raise_on_signal = raise_on_signal
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _handler)


def interrupted_line(exc: Interrupted) -> str:
    return _line(exc.signum, "before the run could save anything")


def is_command() -> bool:
    """Whether this process is a protoscope console command (not a library user or a test process)."""
    if os.path.basename(sys.argv[0] or "").startswith("protoscope-"):
        return True
    argv = list(getattr(sys, "orig_argv", []))
    return any(a == "-m" and b in {f"protoscope.{c}" for c in COMMANDS} for a, b in zip(argv, argv[1:]))


def guard_if_command() -> None:
    """Install the start-up handler as early as possible, and only in a command's process."""
    if is_command() and not os.environ.get("PROTOSCOPE_NO_SIGNAL_GUARD"):
        install(raise_on_signal=False)


# --- torch / torchvision --------------------------------------------------------------------------------
def _version(name: str) -> str:
    """The installed version of ``name`` with its build tag (``2.5.1+cpu``), found without importing it."""
    import importlib.util
    import re
    from importlib.metadata import PackageNotFoundError, version

    try:
        if name == "torch" and "torch" in sys.modules:
            return str(sys.modules["torch"].__version__)
        spec = importlib.util.find_spec(name)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            file = os.path.join(folder, "version.py")
            if os.path.isfile(file):
                with open(file, encoding="utf-8") as fh:
                    found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", fh.read())
                if found:
                    return found.group(1)
    except (ImportError, ValueError, OSError):
        pass
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def mismatch_message(torch_version: str, vision_version: str, reason: str) -> str:
    """The one-line fix for a torchvision build that does not fit torch."""
    base = torch_version.split("+")[0]
    try:
        major, minor = (int(x) for x in base.split(".")[:2])
        pair = f"torchvision==0.{minor + 15}.*" if major == 2 else "the torchvision release made for it"
    except ValueError:
        pair = "the torchvision release made for it"
    local = torch_version.split("+")[1] if "+" in torch_version else ""
    index = (" --index-url https://download.pytorch.org/whl/cpu" if local == "cpu" or not local else
             f" --index-url https://download.pytorch.org/whl/{local}")
    return (f"torchvision {vision_version} does not fit torch {torch_version} ({reason}): install a matching pair "
            f"from one index, e.g. pip install torch=={base} {pair}{index} (CPU only: "
            "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu)")


def check_torchvision() -> None:
    """Import torchvision once; a build that does not fit torch raises EnvironmentMismatch (one line)."""
    from .errors import EnvironmentMismatch

    try:
        import torchvision  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name in ("torchvision", "torch"):
            raise EnvironmentMismatch(f"{exc.name} is not installed: pip install -e . (it installs torch and "
                                      "torchvision)") from None
        raise
    except (RuntimeError, ImportError, AttributeError, OSError) as exc:
        raise_if_signalled()  # a signal inside the import, turned into another error on its way out
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise EnvironmentMismatch(mismatch_message(_version("torch"), _version("torchvision"), reason)) from None
