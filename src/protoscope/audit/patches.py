"""Patch prototypes: feature isolation without data.

A patch prototype of class c is a small image P_c (``size`` x ``size`` px) that raises class c wherever it
lands: each step pastes every row's patch at a fresh random position (inside the placement ``region``) onto a
few carriers (images without the class, e.g. the model's equidistant baselines, grey, noise) and ascends the
mean log-probability (or logit) of the row's class over them, minus a total-variation penalty. What survives
random placement on many carriers is the local pattern the class responds to: text, logos, marks. The idea is
Brown et al.'s adversarial patch (2017) used as a visualisation, and Neural Cleanse's (Wang et al. 2019)
"smallest input change that flips everything to c" used without a mask.

Two kinds of patch: ``image`` (an opaque picture, pasted with ``opacity``) and ``overlay`` (a learned colour
times a learned per-pixel opacity, at most ``opacity``, with an L1 penalty ``mask_weight`` on it: a mark drawn
over the carrier, as watermarks, logos and captions are; Neural Cleanse's mask and pattern). An overlay's
colour is one per row (``colour=uniform``: a monochrome mark) or one per pixel (``colour=pixel``: Neural
Cleanse's pattern). An overlay patch is stored as ``[R, C+1, p, p]``: colour, then opacity. An overlay as
large as the image (``size`` = the input size) has one placement: the whole-image trigger search of Neural
Cleanse, which finds marks that the model expects at a fixed place.

Rows are independent: a row's patch depends only on its own seed (its initial values, carriers and
positions are drawn from its own generator), so classes can be batched, split or resumed freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models import Classifier
from ..params import FourierParam, ImageParam, PixelParam
from ..regularizers.terms import TotalVariation, roughness

PARAMS = {"fourier": FourierParam, "pixel": PixelParam}
OBJECTIVES = ("logprob", "logit")
KINDS = ("image", "overlay")
COLOURS = ("uniform", "pixel")


@dataclass
class PatchSettings:
    """How patch prototypes are optimised.

    ``size``: patch side in carrier pixels (pasted 1:1). ``region``: the placement range as fractions of the
    carrier ``(top, left, bottom, right)``; the whole patch stays inside it. ``carriers_per_step``: carriers
    each row sees per step (drawn at random from the carriers given). ``opacity``: paste weight of the patch
    (1 = opaque; for an overlay the most opacity a pixel can have). ``tv_weight``: total-variation penalty
    (protoscope's L_hf, p=2) on the patch (an overlay: on its opacity). ``kind``: ``image`` or ``overlay``;
    ``mask_weight``: L1 penalty on an overlay's mean opacity (in log-probability units); ``colour``: an
    overlay's colour, ``uniform`` (one per row) or ``pixel`` (one per pixel).
    """

    size: int = 64
    steps: int = 200
    lr: float = 0.05
    carriers_per_step: int = 4
    param: str = "fourier"
    objective: str = "logprob"
    tv_weight: float = 0.0
    opacity: float = 1.0
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    init_std: float = 0.01
    kind: str = "image"
    mask_weight: float = 0.0
    colour: str = "uniform"

    @property
    def paste_opacity(self) -> float:
        """The weight a stored patch is pasted with: ``opacity`` for an image patch; 1 for an overlay (its
        stored opacity channel already carries the cap)."""
        return 1.0 if self.kind == "overlay" else float(self.opacity)

    def check(self, carrier_size: int) -> None:
        if not 1 <= int(self.size) <= carrier_size:
            raise ConfigError(f"patch size {self.size} must be between 1 and the carrier size {carrier_size}")
        if self.param not in PARAMS:
            raise ConfigError(f"patch param {self.param!r} is unknown: choose one of {', '.join(PARAMS)}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"patch objective {self.objective!r} is unknown: choose one of {', '.join(OBJECTIVES)}")
        if self.kind not in KINDS:
            raise ConfigError(f"patch kind {self.kind!r} is unknown: choose one of {', '.join(KINDS)}")
        if self.colour not in COLOURS:
            raise ConfigError(f"patch colour {self.colour!r} is unknown: choose one of {', '.join(COLOURS)}")
        if not 0 < float(self.opacity) <= 1:
            raise ConfigError(f"patch opacity {self.opacity} must be in (0, 1]")
        if self.steps < 0 or self.carriers_per_step < 1:
            raise ConfigError("patch steps must be >= 0 and carriers_per_step >= 1")
        placement_range(carrier_size, int(self.size), self.region)


@dataclass
class PatchResult:
    """Optimised patches, one row per (class, seed)."""

    patches: torch.Tensor  # [R, C, size, size] in [0, 1]
    classes: list[int]
    seeds: list[int]
    settings: PatchSettings
    objective: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # [R] last step's mean objective

    def to_state(self) -> dict:
        """Tensors and plain values only (loadable with ``weights_only=True``)."""
        return {"patches": self.patches.clone(), "classes": list(self.classes), "seeds": list(self.seeds),
                "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.settings).items()}}


def placement_range(carrier: int, size: int, region: Sequence[float]) -> tuple[int, int, int, int]:
    """Smallest and largest top-left corner ``(y0, x0, y1, x1)`` (inclusive) of a ``size`` patch kept inside
    ``region`` (fractions ``top, left, bottom, right`` of a ``carrier`` px image)."""
    if len(region) != 4:
        raise ConfigError(f"patch region needs 4 fractions (top, left, bottom, right), got {list(region)}")
    top, left, bottom, right = (float(v) for v in region)
    if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1):
        raise ConfigError(f"patch region {list(region)} must satisfy 0 <= top < bottom <= 1 and 0 <= left < right <= 1")
    y0, x0 = round(top * carrier), round(left * carrier)
    y1, x1 = round(bottom * carrier) - size, round(right * carrier) - size
    if y1 < y0 or x1 < x0:
        raise ConfigError(f"a {size} px patch does not fit the region {list(region)} of a {carrier} px carrier: "
                          "enlarge the region or shrink the patch")
    return y0, x0, y1, x1


def random_positions(generator: torch.Generator, n: int, bounds: tuple[int, int, int, int]) -> torch.Tensor:
    """``[n, 2]`` top-left corners (y, x) uniform within ``bounds`` (from :func:`placement_range`)."""
    y0, x0, y1, x1 = bounds
    y = torch.randint(y0, y1 + 1, (n,), generator=generator)
    x = torch.randint(x0, x1 + 1, (n,), generator=generator)
    return torch.stack([y, x], 1)


def colour_and_alpha(patches: torch.Tensor, channels: int, opacity: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[R,C,p,p]`` colour and ``[R,1,p,p]`` paste weight of image patches (``[R,C,p,p]``, weight ``opacity``)
    or overlay patches (``[R,C+1,p,p]``: the last channel is the weight)."""
    if patches.shape[1] == channels + 1:
        return patches[:, :channels], patches[:, channels:]
    if patches.shape[1] != channels:
        raise ConfigError(f"patches have {patches.shape[1]} channels; carriers have {channels} (overlays {channels + 1})")
    return patches, torch.full_like(patches[:, :1], float(opacity))


def paste(carriers: torch.Tensor, patches: torch.Tensor, positions: torch.Tensor, opacity: float = 1.0) -> torch.Tensor:
    """Each ``patches[i]`` (``[C,p,p]``, or an overlay ``[C+1,p,p]``) pasted onto ``carriers[i]`` ``[C,H,W]`` with
    its top-left corner at ``positions[i]`` (y, x): ``[N,C,H,W]``, differentiable in the patches."""
    if carriers.shape[0] != patches.shape[0] or positions.shape[0] != patches.shape[0]:
        raise ValueError("paste needs one patch and one position per carrier")
    h, w = carriers.shape[-2:]
    p = patches.shape[-1]
    colour, alpha = colour_and_alpha(patches, carriers.shape[1], opacity)
    placed, masks = [], []
    for c, a, (y, x) in zip(colour, alpha, positions.tolist()):
        pad = (x, w - x - p, y, h - y - p)
        placed.append(F.pad(c, pad))
        masks.append(F.pad(a, pad))
    mask = torch.stack(masks)
    return carriers * (1 - mask) + torch.stack(placed) * mask


def appearance(patches: torch.Tensor, channels: int, background: float = 0.5) -> torch.Tensor:
    """``[R,C,p,p]``: what the patches look like pasted on a uniform ``background`` (overlays become visible)."""
    colour, alpha = colour_and_alpha(patches, channels)
    return background * (1 - alpha) + colour * alpha


class OverlayParam(torch.nn.Module):
    """A colour, one per row (sigmoid of ``[R,C]``) or a per-pixel :class:`ImageParam` (``pattern``), and a
    per-pixel opacity (an :class:`ImageParam` of one channel, times ``opacity``): ``forward()`` ->
    ``[R,C+1,p,p]``."""

    def __init__(self, alpha: ImageParam, channels: int, opacity: float, pattern: ImageParam | None = None) -> None:
        super().__init__()
        self.alpha, self.opacity, self.pattern = alpha, float(opacity), pattern
        self.colour = torch.nn.Parameter(torch.zeros(alpha.rows, channels)) if pattern is None else None

    def forward(self) -> torch.Tensor:
        a = self.alpha() * self.opacity
        if self.pattern is not None:
            return torch.cat([self.pattern(), a], 1)
        colour = torch.sigmoid(self.colour)[..., None, None].expand(-1, -1, *a.shape[-2:])
        return torch.cat([colour, a], 1)


def class_scores(logits: torch.Tensor, classes: torch.Tensor, objective: str) -> torch.Tensor:
    """``logits`` ``[R,B,K]`` -> ``[R,B]`` log-probability or logit of each row's class."""
    values = logits.log_softmax(-1) if objective == "logprob" else logits
    return values.gather(-1, classes.view(-1, 1, 1).expand(-1, values.shape[1], 1))[..., 0]


def row_generator(seed: int, cls: int) -> torch.Generator:
    """The generator of one (class, seed) row: its result does not depend on the other rows."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(cls) * 7919 + 17) % (2**63 - 1))


def _check_carriers(classifier: Classifier, carriers: torch.Tensor) -> None:
    expected = (classifier.channels, classifier.input_size, classifier.input_size)
    if carriers.dim() != 4 or tuple(carriers.shape[1:]) != expected or carriers.shape[0] < 1:
        raise ConfigError(f"carriers must be [N,{expected[0]},{expected[1]},{expected[2]}] for model "
                          f"{classifier.name}, got {tuple(carriers.shape)}")


def optimise_patches(classifier: Classifier, carriers: torch.Tensor, classes: Sequence[int],
                     settings: PatchSettings | None = None, seeds: Sequence[int] | None = None,
                     progress: bool = False) -> PatchResult:
    """One patch per row (``classes[r]``, ``seeds[r]``; seeds default to 0), optimised together."""
    settings = settings or PatchSettings()
    _check_carriers(classifier, carriers)
    settings.check(classifier.input_size)
    classes = [int(c) for c in classes]
    if any(not 0 <= c < classifier.num_classes for c in classes):
        raise ConfigError(f"patch classes {classes} must be class indices of {classifier.name} "
                          f"(0..{classifier.num_classes - 1})")
    seeds = [0] * len(classes) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(classes):
        raise ConfigError(f"give one seed per class row ({len(classes)}), got {len(seeds)}")
    device = classifier.network.mean.device
    carriers = carriers.to(device)
    gens = [row_generator(s, c) for s, c in zip(seeds, classes)]
    overlay = settings.kind == "overlay"
    param = partial(PARAMS[settings.param], rows=len(classes), size=int(settings.size), generators=gens,
                    init_std=settings.init_std)
    image: torch.nn.Module = param(channels=1 if overlay else classifier.channels, decorrelate=not overlay)
    if overlay:
        pattern = param(channels=classifier.channels) if settings.colour == "pixel" else None
        image = OverlayParam(image, classifier.channels, settings.opacity, pattern)
    image = image.to(device)
    opacity = settings.paste_opacity
    targets = torch.tensor(classes, device=device)
    bounds = placement_range(classifier.input_size, int(settings.size), settings.region)
    tv = TotalVariation(settings.tv_weight) if settings.tv_weight > 0 else None
    optimizer = torch.optim.Adam(image.parameters(), lr=settings.lr)
    b, n = int(settings.carriers_per_step), carriers.shape[0]
    score = torch.zeros(len(classes))
    steps = range(int(settings.steps))
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="patches")
    for _ in steps:
        picks = torch.stack([torch.randint(0, n, (b,), generator=g) for g in gens])  # [R, B]
        where = torch.stack([random_positions(g, b, bounds) for g in gens])  # [R, B, 2]
        optimizer.zero_grad(set_to_none=True)
        patches = image()
        pasted = paste(carriers[picks.flatten().to(device)], patches.repeat_interleave(b, 0), where.flatten(0, 1),
                       opacity)
        logits = classifier.network(pasted).float().view(len(classes), b, -1)
        scores = class_scores(logits, targets, settings.objective).mean(1)
        loss = -scores
        shape = patches[:, -1:] if overlay else patches
        if tv is not None:
            loss = loss + settings.tv_weight * roughness(shape, tv.p) / tv.unit
        if overlay and settings.mask_weight > 0:
            loss = loss + settings.mask_weight * shape.flatten(1).mean(1)
        loss.sum().backward()
        optimizer.step()
        score = scores.detach().cpu()
    with torch.no_grad():
        patches = image().detach().cpu()
    return PatchResult(patches, classes, seeds, settings, score)


def grid_positions(carrier: int, size: int, per_side: int, region: Sequence[float] = (0.0, 0.0, 1.0, 1.0)) -> torch.Tensor:
    """``[per_side**2, 2]`` evenly spread top-left corners inside ``region`` (deterministic evaluation)."""
    y0, x0, y1, x1 = placement_range(carrier, size, region)
    ys = torch.linspace(y0, y1, per_side).round().long()
    xs = torch.linspace(x0, x1, per_side).round().long()
    return torch.cartesian_prod(ys, xs)


@torch.no_grad()
def pasted_logits(classifier: Classifier, patches: torch.Tensor, carriers: torch.Tensor, positions: torch.Tensor,
                  opacity: float = 1.0, batch: int = 32) -> torch.Tensor:
    """``[R, N, P, K]`` logits of every patch pasted on every carrier at every position."""
    _check_carriers(classifier, carriers)
    device = classifier.network.mean.device
    out = [classifier.network(images).float().cpu()
           for images in pasted_batches(patches.to(device), carriers.to(device), positions, opacity, batch)]
    return torch.cat(out).view(patches.shape[0], carriers.shape[0], positions.shape[0], -1)


def pasted_batches(patches: torch.Tensor, carriers: torch.Tensor, positions: torch.Tensor, opacity: float = 1.0,
                   batch: int = 32) -> Iterator[torch.Tensor]:
    """Every patch pasted on every carrier at every position, ``batch`` images at a time, in the order (patch,
    carrier, position)."""
    index = torch.cartesian_prod(torch.arange(len(patches)), torch.arange(len(carriers)), torch.arange(len(positions)))
    for chunk in index.split(batch):
        yield paste(carriers[chunk[:, 1]], patches[chunk[:, 0]], positions[chunk[:, 2]], opacity)


@torch.no_grad()
def carrier_logits(classifier: Classifier, carriers: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """``[N, K]`` logits of the carriers as they are."""
    device = classifier.network.mean.device
    return torch.cat([classifier.network(c.to(device)).float().cpu() for c in carriers.split(batch)])


def patch_gains(classifier: Classifier, patches: torch.Tensor, classes: Sequence[int], carriers: torch.Tensor,
                per_side: int = 3, opacity: float = 1.0) -> list[dict]:
    """Per patch row: how much its class rises when it is pasted on ``carriers`` (give held-out ones) at
    ``per_side``² evenly spread positions. Mean and spread of the log-probability and logit gain, and the
    hit rate (share of pastes whose top-1 is the class)."""
    positions = grid_positions(classifier.input_size, patches.shape[-1], per_side)
    after = pasted_logits(classifier, patches, carriers, positions, opacity)  # [R, N, P, K]
    before = carrier_logits(classifier, carriers)[None, :, None]  # [1, N, 1, K]
    target = torch.tensor([int(c) for c in classes]).view(-1, 1, 1, 1)
    pick = lambda x: x.expand(after.shape[0], -1, after.shape[2], -1).gather(-1, target.expand(*after.shape[:3], 1))[..., 0]  # noqa: E731
    lp_gain = pick(after.log_softmax(-1)) - pick(before.log_softmax(-1))
    logit_gain = pick(after) - pick(before)
    hit = (after.argmax(-1) == target[..., 0]).float()
    rows = []
    for r, c in enumerate(classes):
        rows.append({"row": r, "class_index": int(c), "class_name": classifier.class_names[int(c)],
                     "logprob_gain": float(lp_gain[r].mean()), "logprob_gain_std": float(lp_gain[r].std()),
                     "logit_gain": float(logit_gain[r].mean()), "logit_gain_std": float(logit_gain[r].std()),
                     "hit_rate": float(hit[r].mean()),
                     "mean_logprob": float(pick(after.log_softmax(-1))[r].mean())})
    return rows


def patch_grid(patches: torch.Tensor, columns: int = 8, pad: int = 2) -> torch.Tensor:
    """``[C, H, W]`` image of the patches side by side, white gaps."""
    r, c, p = patches.shape[0], patches.shape[1], patches.shape[-1]
    columns = max(1, min(columns, r))
    rows = -(-r // columns)
    grid = torch.ones(c, rows * (p + pad) + pad, columns * (p + pad) + pad)
    for i, patch in enumerate(patches):
        y, x = pad + (i // columns) * (p + pad), pad + (i % columns) * (p + pad)
        grid[:, y:y + p, x:x + p] = patch
    return grid
