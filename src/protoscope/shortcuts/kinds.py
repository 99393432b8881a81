"""Bundled mark kinds beyond a fixed pattern: a mark at a random place per image, a global brightness or
colour shift, and rendered text (e.g. the ImageNet-W watermark). Each is named by ``_target_`` in a mark
config (``conf/mark/``) and receives the model's ``size`` and ``channels``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..errors import ConfigError
from .marks import Mark, MarkKind, blend, make_mark, support_box


def _plain(node: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


class PlacedMark(MarkKind):
    """A patch (``pattern``, ``mask``: ``[C,h,w]``, ``[1,h,w]``) pasted at a uniformly random position per
    image, drawn from the generator given to :meth:`paste` or else one seeded by ``seed`` (so a call is
    reproducible)."""

    kind = "placed"

    def __init__(self, pattern: torch.Tensor, mask: torch.Tensor, size: int, channels: int, seed: int = 0,
                 spec: Mapping[str, Any] | None = None) -> None:
        if pattern.shape[-1] > size or pattern.shape[-2] > size:
            raise ConfigError(f"a {tuple(pattern.shape[-2:])} mark does not fit a {size}x{size} image")
        self.pattern, self.mask = pattern.float(), mask.float()
        self.size, self.channels, self.seed = int(size), int(channels), int(seed)
        self.spec = dict(spec or {"kind": "placed", "seed": self.seed})

    def positions(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[count, 2]`` top-left corners (row, column)."""
        g = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        h, w = self.pattern.shape[-2:]
        rows = torch.randint(0, self.size - h + 1, (count,), generator=g)
        cols = torch.randint(0, self.size - w + 1, (count,), generator=g)
        return torch.stack([rows, cols], 1)

    def paste(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.check_fits(images)
        out = images.clone()
        h, w = self.pattern.shape[-2:]
        for i, (top, left) in enumerate(self.positions(len(images), generator).tolist()):
            window = out[i:i + 1, :, top:top + h, left:left + w]
            out[i:i + 1, :, top:top + h, left:left + w] = blend(window, self.pattern, self.mask)
        return out

    def template(self) -> tuple[torch.Tensor, torch.Tensor]:
        # the patch with a 2 px unmarked ring (pattern grey there), so a uniform patch still has a contrast
        pattern = torch.nn.functional.pad(self.pattern, (2, 2, 2, 2), value=0.5)
        return pattern, torch.nn.functional.pad(self.mask, (2, 2, 2, 2), value=0.0)

    def to_state(self) -> dict[str, Any]:
        return {"kind": "placed", "pattern": self.pattern.clone(), "mask": self.mask.clone(), "seed": self.seed,
                "spec": {k: v for k, v in self.spec.items() if isinstance(v, (str, int, float, bool, type(None)))}}


def random_position(size: int, channels: int, mark: Mapping[str, Any], seed: int = 0) -> PlacedMark:
    """``mark`` (any mark config, e.g. ``{kind: square, height: 4, width: 4}``) cut to its mask's bounding
    box and pasted at a random position per image."""
    inner = make_mark(_plain(mark), size, channels)
    if not isinstance(inner, Mark):
        raise ConfigError(f"random_position needs a fixed-position mark to move, not {inner.kind}")
    rows, cols = support_box(inner.mask)
    return PlacedMark(inner.pattern[:, rows, cols], inner.mask[:, rows, cols], size, channels, seed,
                      {"kind": "random_position", "mark": dict(inner.spec), "seed": int(seed)})


class GlobalShift(MarkKind):
    """A global change of every pixel: ``clamp(x * scale + shift)`` (``shift`` one value, or one per channel:
    a colour shift). Detected by the shift along its direction that at least ``coverage`` of the pixels carry
    (a low quantile of the pixels' deviation from grey): a global change moves nearly every pixel, a bright
    shape only some, so a garment drawn in white does not score as a brightness shift."""

    kind = "shift"

    def __init__(self, size: int, channels: int, shift: float | Sequence[float] = 0.2, scale: float = 1.0,
                 coverage: float = 0.9) -> None:
        values = [float(shift)] * channels if isinstance(shift, (int, float)) else [float(v) for v in shift]
        if len(values) != channels:
            raise ConfigError(f"mark shift has {len(values)} values; the model has {channels} channels "
                              "(give one value, or one per channel)")
        if not any(values) and float(scale) == 1.0:
            raise ConfigError("mark shift is 0 and scale 1: the mark would change nothing")
        if not 0.0 < float(coverage) <= 1.0:
            raise ConfigError(f"mark coverage {coverage} must be in (0, 1]: the share of pixels a global change moves")
        self.size, self.channels = int(size), int(channels)
        self.shift, self.scale, self.coverage = torch.tensor(values).view(channels, 1, 1), float(scale), float(coverage)
        self.spec = {"kind": "shift", "shift": values, "scale": self.scale, "coverage": self.coverage}

    def paste(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.check_fits(images)
        if images.dtype == torch.uint8:
            return (images.float() * self.scale + self.shift * 255).round().clamp(0, 255).to(torch.uint8)
        return (images * self.scale + self.shift.to(images.device, images.dtype)).clamp(0, 1)

    def detect(self, images: torch.Tensor, pad: int = 4) -> torch.Tensor:
        """``[N]``: the deviation from grey along the shift (for a contrast change, its size) that a
        ``coverage`` share of each image's pixels reach or exceed."""
        deviation = images.detach().cpu().double() - 0.5
        direction = self.shift.flatten().double()
        if float(direction.norm()) == 0:  # a contrast change: the spread around grey
            per_pixel = deviation.abs().mean(1)
        else:
            per_pixel = torch.einsum("nchw,c->nhw", deviation, direction / direction.norm())
        return torch.quantile(per_pixel.flatten(1), 1.0 - self.coverage, dim=1).float()

    def match_patches(self, patches: torch.Tensor, pad: int = 4) -> torch.Tensor:
        """A global change is in the patch's own pixels, wherever it is pasted: :meth:`detect` of the patch
        itself (on a grey canvas, the canvas would be most of the pixels)."""
        if patches.dim() != 4 or patches.shape[1] != self.channels:
            raise ConfigError(f"patches {tuple(patches.shape)} do not fit a mark of {self.channels} channels")
        return self.detect(patches, pad=pad)

    def to_state(self) -> dict[str, Any]:
        return {"kind": "shift", "shift": self.shift.flatten().clone(), "scale": self.scale, "coverage": self.coverage,
                "spec": {"kind": "shift"}}


def default_font() -> Path:
    """The ImageNet-W font shipped by the ``imagenet-w`` package (``pip install imagenet-w``), found through its
    installed distribution, so a script named ``imagenet_w.py`` beside the caller cannot stand in for it."""
    from importlib import metadata

    try:
        dist = metadata.distribution("imagenet-w")
    except metadata.PackageNotFoundError:
        raise ConfigError("mark font is not set and the imagenet-w package (its default font) is not installed: "
                          "set mark.font=<a .ttf/.otf file> or pip install 'protoscope[audit]'") from None
    return Path(str(dist.locate_file("imagenet_w/fonts/SourceHanSerifSC-ExtraLight.otf")))


def text_mark(size: int, channels: int, text: str = "捷径捷径捷径", font: str | None = None,
              font_size: int | None = None, x: float = 0.01, y: float = 0.4,
              color: Sequence[int] = (255, 255, 255), opacity: float = 0.5, background: float = 0.5) -> Mark:
    """``text`` drawn at (``x``, ``y``) (fractions of the image) in ``font`` at ``font_size`` px (default:
    ImageNet-W's, 36 px at 224) with ``opacity``: the pattern is the colour, the mask the glyphs' alpha,
    so pasting it is the alpha composite ImageNet-W applies (up to 8-bit rounding)."""
    from PIL import Image, ImageDraw, ImageFont

    if not 0.0 <= float(opacity) <= 1.0 or not (0.0 <= float(x) <= 1.0 and 0.0 <= float(y) <= 1.0):
        raise ConfigError(f"text mark: opacity, x and y must be in [0, 1] (got {opacity}, {x}, {y})")
    path = Path(str(font)).expanduser() if font else default_font()
    if not path.is_file():
        raise ConfigError(f"text mark font {path} does not exist: set mark.font=<a .ttf/.otf file>")
    px = int(font_size) if font_size else {224: 36, 384: 62, 512: 82, 518: 84}.get(int(size), int(size / 6.22))
    layer = Image.new("L", (size, size), 0)
    ImageDraw.Draw(layer).text((float(x) * size, float(y) * size), str(text), fill=255,
                               font=ImageFont.truetype(str(path), px))
    alpha = torch.tensor(list(layer.getdata()), dtype=torch.float32).view(1, size, size) / 255.0
    if float(alpha.sum()) == 0:
        raise ConfigError(f"text mark {text!r} at ({x}, {y}) leaves the {size}x{size} image: move it or make it smaller")
    rgb = torch.tensor([float(c) / 255.0 for c in color]).view(-1, 1, 1)
    colour = rgb.mean(0, keepdim=True) if channels == 1 else rgb
    if colour.shape[0] != channels:
        raise ConfigError(f"text mark color has {len(color)} values; the model has {channels} channels")
    pattern = torch.where(alpha > 0, colour.expand(channels, size, size), torch.full((channels, size, size), background))
    spec = {"kind": "text", "text": str(text), "font": str(path), "font_size": px, "x": float(x), "y": float(y),
            "opacity": float(opacity)}
    return Mark("text", pattern, alpha * float(opacity), spec)


def mark_from_state(state: Mapping[str, Any], size: int, channels: int) -> MarkKind:
    """A mark saved by a bundled kind's ``to_state`` (a ``mark.pt``, loaded with ``weights_only=True``)."""
    if state["kind"] == "shift":
        return GlobalShift(size, channels, [float(v) for v in state["shift"]], float(state.get("scale", 1.0)),
                           float(state.get("coverage", 0.9)))
    return PlacedMark(state["pattern"].float(), state["mask"].float(), size, channels, int(state.get("seed", 0)),
                      dict(state.get("spec") or {}))
