"""protoscope: data-independent, quantitatively checked prototypes of image classifiers.

``protoscope.render(model, objective, ...)`` runs a whole optimisation without a trainer (see
:mod:`protoscope.generation.renderer`); it is imported on first use, so the command-line tools start fast.
"""

from typing import Any

from .startup import guard_if_command

guard_if_command()  # a command's Ctrl-C/SIGTERM during its start-up imports: one line, not a traceback

__version__ = "0.1.0"
__all__ = ["render", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "render":
        from .generation.renderer import render

        return render
    raise AttributeError(f"module 'protoscope' has no attribute {name!r}")
