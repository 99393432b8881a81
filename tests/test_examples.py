"""The notebook-style examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_render_example_drives_its_channel_and_writes_the_image(tmp_path):
    env = {**os.environ, "STEPS": "10", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "render.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    start, after = map(float, re.search(r"([-\d.]+) at the start, ([-\d.]+) after 10 steps", done.stdout).groups())
    assert after > 3 * max(start, 0.1)  # ten steps already multiply the channel's mean activation
    assert Image.open(tmp_path / "channel.png").size == (128, 128)
    user_code = (ROOT / "examples" / "render.py").read_text().split("# --- the user code")[1].splitlines()[1:]
    assert len([line for line in user_code if line.strip()]) <= 10
