"""An experiment as a sequence of protoscope commands, each writing its own folder.

Every command records its run in its folder's ``run.json`` (:mod:`protoscope.recorded`): started again on
a folder that holds its completed run it skips it, and with another recipe it refuses in one line. So a
script that runs the same sequence again resumes where it stopped, with no done-markers of its own.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ProtoscopeError

log = logging.getLogger("protoscope")


class StepFailed(ProtoscopeError):
    """A command of an experiment's sequence exited non-zero."""


def run_steps(steps: Mapping[str, Sequence[str]], logs: Path, cwd: Path | None = None,
              env: Mapping[str, str] | None = None) -> dict[str, float]:
    """Run each ``name: command`` in order, its output appended to ``logs/<name>.log``; the seconds of each.

    A failing command raises :class:`StepFailed` with its last output line and its log file.
    """
    logs.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    for name, cmd in steps.items():
        log.info("%s: %s", name, shlex.join(cmd))
        start = time.perf_counter()
        file = logs / f"{name}.log"
        with open(file, "a") as out:  # a rerun appends: earlier attempts stay readable
            rc = subprocess.run(list(cmd), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}).returncode
        if rc != 0:
            tail = [line for line in file.read_text().splitlines() if line.strip()][-1:]
            raise StepFailed(f"step {name} failed (exit {rc}): {' '.join(tail)} (log: {file})")
        seconds[name] = time.perf_counter() - start
    return seconds

