"""The real Lucent (PyPI ``torch-lucent``) as a baseline: ``render_vis`` with its own defaults.

One ``render_vis`` call per prototype row: Fourier parameterisation with decorrelated colour
(``param.image``), ``transform.standard_transforms`` (pad 12, jitter 8, scale 0.9-1.1, rotate ±10°,
jitter 4, in pixels), Adam lr 0.05, 512 steps, objective ``channel("logits", c)`` (= −logit_c). Two
deliberate differences from calling ``render_vis`` on a torchvision model, both so that the *same*
model as protoscope's is rendered: the model's own normalisation is applied inside protoscope's
wrapper (``preprocess=False`` instead of Lucent's fixed torchvision normalisation) and images are
not upsampled to 224 px (``fixed_image_size`` = the model's input size).

Lucent pitfalls handled here: it places tensors on its module-level device (``cuda:0`` when CUDA
exists), so the model is moved there; older versions append to the transform list they are given,
so each call gets a fresh copy; it draws from the global torch and NumPy generators, so each row
is seeded from its own stream and the global generator states are restored afterwards.
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from ..errors import ConfigError
from ..generation.export import export_prototypes, prototype_records
from ..hydra_utils import save_config
from ..io import write_torch
from ..models import Classifier
from ..models.store import pin_models
from ..generation.pipeline import evaluate_run, prepare
from ..reference import build_reference
from ..generation.rows import Row

log = logging.getLogger("protoscope")
INSTALL_HINT = "install the optional extra: pip install 'protoscope[lucent]'"


def import_lucent():
    """Lucent's modules (``objectives, param, render, transform``), or a one-line error saying how to install."""
    try:
        with warnings.catch_warnings():  # kornia 0.4.1 (Lucent's dependency) calls torch.jit.script at import
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script. is deprecated", category=FutureWarning)
            from lucent.optvis import objectives, param, render, transform
    except ImportError as exc:
        raise ConfigError(f"protoscope-lucent needs torch-lucent ({exc}); {INSTALL_HINT}") from exc
    return objectives, param, render, transform


def lucent_device() -> torch.device:
    """The device Lucent creates its tensors on (a module-level constant of Lucent)."""
    from lucent.optvis.param import spatial

    return torch.device(spatial.device)


class LogitsModel(nn.Module):
    """The classifier with an identity module named ``logits`` last, so Lucent can hook its output."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.net = network
        self.logits = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.net(x))


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed the global torch and NumPy generators (Lucent uses both) and restore them afterwards."""
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(np_state)


def render_row(classifier: Classifier, class_index: int, size: int, steps: int, lr: float, seed: int) -> torch.Tensor:
    """One Lucent rendering of ``class_index``: ``[C, size, size]`` in [0,1] on the CPU."""
    objectives, param, render, transform = import_lucent()
    model = LogitsModel(classifier.network).eval()
    channels = classifier.channels
    with seeded(seed):
        images = render.render_vis(
            model,
            objectives.channel("logits", int(class_index)),
            param_f=lambda: param.image(size, channels=None if channels == 3 else channels),
            optimizer=lambda params: torch.optim.Adam(params, lr=lr),
            transforms=list(transform.standard_transforms),  # a fresh list: never mutate Lucent's
            thresholds=(steps,),
            preprocess=False,
            progress=False,
            show_image=False,
            fixed_image_size=size,
        )
    return torch.from_numpy(np.ascontiguousarray(images[-1][0])).permute(2, 0, 1).float()


def run_lucent(cfg: DictConfig) -> tuple[Path, torch.Tensor, list[Row], list[dict]]:
    """Render every row with Lucent and write a run folder like ``protoscope-generate``'s."""
    import_lucent()
    start = time.perf_counter()
    out_dir = Path(cfg.paths.output_dir)
    pin_models(cfg)  # config.yaml names the exact weights file
    classifier, rows, size = prepare(cfg)
    device = lucent_device()
    wanted = cfg.get("device")
    if wanted not in (None, "auto") and torch.device(str(wanted)).type != device.type:
        raise ConfigError(f"Lucent always renders on {device} (its module-level device); set device=auto "
                          f"or {device.type}, or hide the GPU (CUDA_VISIBLE_DEVICES=) to render on the CPU")
    if any(len(r.classes) > 1 for r in rows):
        raise ConfigError("protoscope-lucent renders single classes only; remove the a+b hybrids from classes")
    reference = build_reference(cfg.reference, classifier, sorted({r.classes[0] for r in rows})) \
        if cfg.get("reference") else None
    steps, lr, seed = int(cfg.steps), float(cfg.lr), int(cfg.seed)
    save_config(cfg, out_dir / "config.yaml")
    log.info("rendering %d prototypes with Lucent (%d steps each) at %dpx on %s", len(rows), steps, size, device)
    classifier.to(device)
    images = []
    try:
        for i, row in enumerate(rows):
            done = out_dir / "rows" / f"{row.key}_seed{row.seed}.pt"  # resume: finished rows are kept
            if done.is_file():
                images.append(torch.load(done, map_location="cpu", weights_only=True))
                continue
            t = time.perf_counter()
            image = render_row(classifier, row.classes[0], size, steps, lr, row.stream_seed(seed, "lucent"))
            write_torch(done, image)
            images.append(image)
            log.info("row %d/%d (%s, seed %d) in %.1f s", i + 1, len(rows), row.name, row.seed, time.perf_counter() - t)
    finally:
        classifier.to("cpu")
    batch = torch.stack(images)
    records = prototype_records(classifier, batch, rows, seed=seed)
    export_prototypes(out_dir, batch, rows, records)
    if reference is not None:
        evaluate_run(out_dir, classifier, batch, rows, reference, [])
    log.info("done in %.1f s: top-1 %d/%d, mean target prob %.3f", time.perf_counter() - start,
             sum(r["target_rank"] == 1 for r in records), len(records),
             sum(r["target_prob"] for r in records) / len(records))
    return out_dir, batch, rows, records
