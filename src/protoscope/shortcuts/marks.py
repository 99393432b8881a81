"""Marks: small image patterns pasted onto images (planted shortcuts, and what a detector looks for).

A :class:`Mark` is a ``pattern`` ``[C,H,W]`` in [0,1] and a paste weight ``mask`` ``[1,H,W]`` in [0,1]:
``paste(x) = x * (1 - mask) + pattern * mask``. Outside the mask the pattern holds the mark's
*background* (the contrast it is seen against); a detector compares images with the pattern over the
whole image or a window around the mask (:meth:`Mark.window`).

Kinds (``make_mark``):

``square``  a filled rectangle of brightness ``value`` (default 4x4 px, top-left corner, 1 px margin).
``stripes`` stripes of period ``period`` px (half bright, half dark), ``vertical`` or ``horizontal``,
            in a region (default: the whole image) blended with opacity ``alpha``.
``file``    a saved mark: ``path`` to a ``mark.pt`` written by ``protoscope-train`` (tensors only,
            loaded with ``weights_only=True``), or to a pattern image with ``mask_path`` to a grey mask image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ..errors import ConfigError

MARK_KINDS = ("square", "stripes", "file")
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
ORIENTATIONS = ("vertical", "horizontal")


@dataclass
class Mark:
    """A pattern and its paste weight, at one image size."""

    kind: str
    pattern: torch.Tensor  # [C, H, W] in [0, 1]
    mask: torch.Tensor  # [1, H, W] in [0, 1]
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.pattern.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.pattern.shape[0])

    def paste(self, images: torch.Tensor) -> torch.Tensor:
        """The mark pasted onto ``images`` ``[N,C,H,W]`` (float in [0,1], or uint8 in [0,255])."""
        self.check_fits(images)
        mask = self.mask.to(images.device)
        if images.dtype == torch.uint8:
            out = images.float() * (1 - mask) + (self.pattern.to(images.device) * 255) * mask
            return out.round().clamp(0, 255).to(torch.uint8)
        return images * (1 - mask) + self.pattern.to(images.device, images.dtype) * mask

    def window(self, ring: int | None = None) -> torch.Tensor:
        """Boolean ``[H, W]``: the mask's support grown by ``ring`` pixels (None: the whole image)."""
        if ring is None:
            return torch.ones(self.mask.shape[-2:], dtype=torch.bool)
        support = (self.mask[0] > 0).float()[None, None]
        if ring > 0:
            support = F.max_pool2d(support, 2 * ring + 1, stride=1, padding=ring)
        return support[0, 0] > 0

    def check_fits(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or tuple(images.shape[1:]) != tuple(self.pattern.shape):
            raise ConfigError(
                f"mark {self.kind} is {tuple(self.pattern.shape)} (channels, height, width) but the images are "
                f"{tuple(images.shape[1:])}: build the mark at the model's input size and channels"
            )

    def to_state(self) -> dict[str, Any]:
        """Tensors and plain values only (loadable with ``weights_only=True``)."""
        return {"kind": self.kind, "pattern": self.pattern.clone(), "mask": self.mask.clone(),
                "spec": {k: v for k, v in self.spec.items() if isinstance(v, (str, int, float, bool, type(None)))}}


def _extent(value: Any, size: int, name: str) -> int:
    """A height/width in pixels; 0 or None means the whole image."""
    if value in (None, 0):
        return size
    n = int(value)
    if not 0 < n <= size:
        raise ConfigError(f"mark {name}={value} must be between 1 and the image size {size} (0 or null: all of it)")
    return n


def _region(size: int, corner: str, height: Any, width: Any, margin: int) -> tuple[slice, slice]:
    """Rows and columns of a ``height`` x ``width`` box ``margin`` px from ``corner``."""
    if corner not in CORNERS:
        raise ConfigError(f"mark corner {corner!r} is unknown: choose one of {', '.join(CORNERS)}")
    h, w = _extent(height, size, "height"), _extent(width, size, "width")
    margin = int(margin)
    mh = 0 if h == size else margin
    mw = 0 if w == size else margin
    if margin < 0 or h + mh > size or w + mw > size:
        raise ConfigError(f"a {h}x{w} mark with margin {margin} does not fit a {size}x{size} image")
    top = mh if corner.startswith("top") else size - h - mh
    left = mw if corner.endswith("left") else size - w - mw
    return slice(top, top + h), slice(left, left + w)


def _unit(value: Any, name: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"mark {name}={value} must be in [0, 1]")
    return v


def square_mark(size: int, channels: int, corner: str = "top_left", height: int = 4, width: int = 4,
                margin: int = 1, value: float = 1.0, background: float = 0.0, alpha: float = 1.0) -> Mark:
    """A filled box of brightness ``value`` near ``corner``, seen against ``background``."""
    rows, cols = _region(size, corner, height, width, margin)
    value, background, alpha = _unit(value, "value"), _unit(background, "background"), _unit(alpha, "alpha")
    if value == background:
        raise ConfigError(f"mark value and background are both {value}: the square would be invisible to a detector")
    pattern = torch.full((channels, size, size), background)
    pattern[:, rows, cols] = value
    mask = torch.zeros(1, size, size)
    mask[:, rows, cols] = alpha
    spec = dict(kind="square", corner=corner, height=height, width=width, margin=margin, value=value,
                background=background, alpha=alpha)
    return Mark("square", pattern, mask, spec)


def stripes_mark(size: int, channels: int, period: int = 4, orientation: str = "vertical", corner: str = "top_left",
                 height: int | None = None, width: int | None = None, margin: int = 0, value: float = 1.0,
                 alpha: float = 0.3, phase: int = 0) -> Mark:
    """Stripes (``period`` px: first half ``value``, second half dark) in a region, opacity ``alpha``."""
    period = int(period)
    if period < 2:
        raise ConfigError(f"stripe period must be at least 2 pixels, got {period}")
    if orientation not in ORIENTATIONS:
        raise ConfigError(f"stripe orientation {orientation!r} is unknown: choose {' or '.join(ORIENTATIONS)}")
    rows, cols = _region(size, corner, height, width, margin)
    value, alpha = _unit(value, "value"), _unit(alpha, "alpha")
    if value == 0 or alpha == 0:
        raise ConfigError("stripes need value > 0 and alpha > 0 to be visible")
    coord = torch.arange(size) + int(phase)
    on = ((coord % period) < (period + 1) // 2).float() * value
    stripes = on.view(1, size).expand(size, size) if orientation == "vertical" else on.view(size, 1).expand(size, size)
    pattern = torch.zeros(channels, size, size)
    pattern[:, rows, cols] = stripes[rows, cols]
    mask = torch.zeros(1, size, size)
    mask[:, rows, cols] = alpha
    spec = dict(kind="stripes", period=period, orientation=orientation, corner=corner, height=height, width=width,
                margin=margin, value=value, alpha=alpha, phase=phase)
    return Mark("stripes", pattern, mask, spec)


def load_mark(path: str | Path, size: int, channels: int, mask_path: str | Path | None = None) -> Mark:
    """A ``mark.pt`` (pattern, mask) or a pattern image plus a grey mask image (white = pasted)."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"mark file {path} does not exist: give a mark.pt from a protoscope-train run folder, "
                          "or a pattern image with mask_path=<mask image>")
    if path.suffix == ".pt":
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            pattern, mask = state["pattern"].float(), state["mask"].float()
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
            raise ConfigError(f"cannot read mark file {path} ({type(exc).__name__}: {exc}); expected a dict with "
                              "'pattern' [C,H,W] and 'mask' [1,H,W] tensors") from exc
    else:
        if not mask_path:
            raise ConfigError(f"mark image {path} needs a mask: set mask_path=<grey image, white where the mark is>")
        from ..reference.preprocess import convert_channels, read_image, to_float, to_tensor

        pattern = convert_channels(to_float(to_tensor(read_image(path))), channels)
        mask_file = Path(str(mask_path)).expanduser()
        if not mask_file.is_file():
            raise ConfigError(f"mark mask image {mask_file} does not exist (mask_path)")
        mask = convert_channels(to_float(to_tensor(read_image(mask_file))), 1)
    if pattern.dim() == 3 and pattern.shape[0] in (1, 3) and pattern.shape[0] != channels:
        from ..reference.preprocess import convert_channels

        pattern = convert_channels(pattern, channels)
    if tuple(pattern.shape) != (channels, size, size) or tuple(mask.shape) != (1, size, size):
        raise ConfigError(f"mark {path} is {tuple(pattern.shape)} with mask {tuple(mask.shape)}; the model needs "
                          f"({channels}, {size}, {size}) and (1, {size}, {size})")
    return Mark("file", pattern.clamp(0, 1), mask.clamp(0, 1), {"kind": "file", "path": str(path)})


def make_mark(spec: Mapping[str, Any], size: int, channels: int) -> Mark:
    """Build a mark from a config node ``{kind: square|stripes|file, ...options}`` for one image size."""
    options = dict(spec)
    kind = str(options.pop("kind", None))
    builders = {"square": square_mark, "stripes": stripes_mark}
    if kind == "file":
        if not options.get("path"):
            raise ConfigError("mark kind 'file' needs path=<mark.pt or pattern image>")
        return load_mark(options["path"], size, channels, options.get("mask_path"))
    if kind not in builders:
        raise ConfigError(f"unknown mark kind {kind!r}: choose one of {', '.join(MARK_KINDS)}")
    try:
        return builders[kind](size, channels, **options)
    except TypeError as exc:
        raise ConfigError(f"mark {kind}: {exc}".replace(f"{builders[kind].__name__}()", "option")) from exc
