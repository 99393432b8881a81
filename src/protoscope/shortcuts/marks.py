"""Marks: what is pasted onto images (planted shortcuts, and what a detector looks for).

A mark is a *kind*: a :class:`MarkKind` subclass decides how it lands on an image (:meth:`MarkKind.paste`)
and how a detector scores an image for it (:meth:`MarkKind.detect`, position-free by default). Any
class named by ``_target_`` in a mark config is a kind (it receives ``size`` and ``channels``), with no
edit to protoscope; the bundled kinds are in this module and :mod:`protoscope.shortcuts.kinds`.

A fixed-position :class:`Mark` is a ``pattern`` ``[C,H,W]`` in [0,1] and a paste weight ``mask`` ``[1,H,W]`` in [0,1]:
``paste(x) = x * (1 - mask) + pattern * mask``. Outside the mask the pattern holds the mark's
*background* (the contrast it is seen against); a detector compares images with the pattern over the
whole image or a window around the mask (:meth:`Mark.window`).

Kinds (``make_mark``):

``square``  a filled rectangle of brightness ``value`` (default 4x4 px, top-left corner, 1 px margin).
``stripes`` stripes of period ``period`` px (half bright, half dark), ``vertical`` or ``horizontal``,
            in a region (default: the whole image) blended with opacity ``alpha``.
``_target_`` any :class:`MarkKind` class or factory, e.g. ``protoscope.shortcuts.kinds.random_position``
            (a mark at a random place per image), ``GlobalShift`` (brightness / colour), ``text_mark``.
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
STATE_KINDS = ("placed", "shift")  # mark.pt kinds rebuilt by protoscope.shortcuts.kinds.mark_from_state
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
ORIENTATIONS = ("vertical", "horizontal")


class MarkKind:
    """How a mark lands on ``[N,C,H,W]`` images and how a detector finds it (subclass this for a new kind).

    ``paste`` must be deterministic for a given ``generator`` (a random placement draws from it, or from a
    generator seeded by the mark's own seed when none is given). ``template`` is what the mark looks like
    locally (pattern ``[C,h,w]``, paste weight ``[1,h,w]``), or None for a global change; ``detect`` scores
    images for the mark (default: the best mask-weighted match of the template at any position).
    """

    kind: str
    size: int
    channels: int
    spec: dict[str, Any]

    def paste(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def template(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def detect(self, images: torch.Tensor, pad: int = 4) -> torch.Tensor:
        """``[N]`` detection score (about 0 for unrelated images, 1 for the mark itself)."""
        from .matching import best_match

        template = self.template()
        if template is None:
            raise ConfigError(f"mark {self.kind} has no template: give it a detect() method")
        return best_match(images, *template, pad=pad).score

    def match_patches(self, patches: torch.Tensor, pad: int = 4) -> torch.Tensor:
        """``[N]`` how much each patch ``[N,C,p,p]`` (a patch prototype as it looks on grey, ``p`` at most the
        mark's size) shows the mark: :meth:`detect` of the patch pasted at the centre of a grey image."""
        p = patches.shape[-1]
        if patches.dim() != 4 or p > self.size or patches.shape[1] != self.channels:
            raise ConfigError(f"patches {tuple(patches.shape)} do not fit a mark of {self.channels} channels at "
                              f"{self.size} px")
        at = (self.size - p) // 2
        canvas = torch.full((len(patches), self.channels, self.size, self.size), 0.5, dtype=patches.dtype)
        canvas[:, :, at:at + p, at:at + p] = patches.detach().cpu()
        return self.detect(canvas, pad=pad)

    def picture(self) -> torch.Tensor:
        """``[C,H,W]``: the mark pasted on grey (for mark.png)."""
        return self.paste(torch.full((1, self.channels, self.size, self.size), 0.5),
                          torch.Generator().manual_seed(0))[0]

    def check_fits(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or tuple(images.shape[1:]) != (self.channels, self.size, self.size):
            raise ConfigError(
                f"mark {self.kind} is {(self.channels, self.size, self.size)} (channels, height, width) but the "
                f"images are {tuple(images.shape[1:])}: build the mark at the model's input size and channels"
            )

    def to_state(self) -> dict[str, Any]:
        raise ConfigError(f"mark {self.kind} cannot be saved as a mark.pt: give it a to_state() method")


def blend(images: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``images * (1 - mask) + pattern * mask`` for float images in [0,1] or uint8 images in [0,255]."""
    mask = mask.to(images.device)
    if images.dtype == torch.uint8:
        out = images.float() * (1 - mask) + (pattern.to(images.device) * 255) * mask
        return out.round().clamp(0, 255).to(torch.uint8)
    return images * (1 - mask) + pattern.to(images.device, images.dtype) * mask


def support_box(mask: torch.Tensor, ring: int = 0) -> tuple[slice, slice]:
    """Rows and columns of the bounding box of ``mask`` ``[1,H,W]`` > 0, grown by ``ring`` px (clipped)."""
    ys, xs = (mask[0] > 0).nonzero(as_tuple=True)
    if len(ys) == 0:
        raise ConfigError("the mark's mask is empty: nothing would be pasted")
    h, w = mask.shape[-2:]
    return (slice(max(0, int(ys.min()) - ring), min(h, int(ys.max()) + 1 + ring)),
            slice(max(0, int(xs.min()) - ring), min(w, int(xs.max()) + 1 + ring)))


@dataclass
class Mark(MarkKind):
    """A pattern and its paste weight at a fixed position, at one image size."""

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

    def paste(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The mark pasted onto ``images`` ``[N,C,H,W]`` (float in [0,1], or uint8 in [0,255])."""
        self.check_fits(images)
        return blend(images, self.pattern, self.mask)

    def template(self, ring: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """The pattern and mask inside the mask's bounding box grown by ``ring`` px (the detector's window)."""
        rows, cols = support_box(self.mask, ring)
        return self.pattern[:, rows, cols], self.mask[:, rows, cols]

    def picture(self) -> torch.Tensor:
        return self.pattern * self.mask

    def window(self, ring: int | None = None) -> torch.Tensor:
        """Boolean ``[H, W]``: the mask's support grown by ``ring`` pixels (None: the whole image)."""
        if ring is None:
            return torch.ones(self.mask.shape[-2:], dtype=torch.bool)
        support = (self.mask[0] > 0).float()[None, None]
        if ring > 0:
            support = F.max_pool2d(support, 2 * ring + 1, stride=1, padding=ring)
        return support[0, 0] > 0

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


def load_mark(path: str | Path, size: int, channels: int, mask_path: str | Path | None = None) -> MarkKind:
    """A ``mark.pt`` (any bundled kind's ``to_state``) or a pattern image plus a grey mask image (white = pasted)."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"mark file {path} does not exist: give a mark.pt from a protoscope-train run folder, "
                          "or a pattern image with mask_path=<mask image>")
    if path.suffix == ".pt":
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("kind") in STATE_KINDS:
                from .kinds import mark_from_state

                return mark_from_state(state, size, channels)
            pattern, mask = state["pattern"].float(), state["mask"].float()
        except ConfigError:
            raise
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


def build_kind(options: Mapping[str, Any], size: int, channels: int) -> MarkKind:
    """The :class:`MarkKind` named by ``options['_target_']`` (a class or factory taking ``size``, ``channels``
    and the other options); nested marks stay config nodes for the target to build."""
    from omegaconf import OmegaConf

    from ..hydra_utils import build

    mark = build(OmegaConf.create(dict(options)), size=size, channels=channels, _recursive_=False, _convert_="all")
    if not isinstance(mark, MarkKind):
        raise ConfigError(f"mark _target_ {options['_target_']} built a {type(mark).__name__}, not a mark: subclass "
                          "protoscope.shortcuts.MarkKind (paste, and template or detect)")
    return mark


def make_mark(spec: Mapping[str, Any], size: int, channels: int) -> MarkKind:
    """Build a mark from a config node for one image size: ``{kind: square|stripes|file, ...options}`` or
    ``{_target_: <MarkKind class or factory>, ...options}``."""
    options = {k: v for k, v in dict(spec).items()}
    if "_target_" in options:
        return build_kind(options, size, channels)
    kind = str(options.pop("kind", None))
    builders = {"square": square_mark, "stripes": stripes_mark}
    if kind == "file":
        if not options.get("path"):
            raise ConfigError("mark kind 'file' needs path=<mark.pt or pattern image>")
        return load_mark(options["path"], size, channels, options.get("mask_path"))
    if kind not in builders:
        raise ConfigError(f"unknown mark kind {kind!r}: choose one of {', '.join(MARK_KINDS)}, "
                          "or name a MarkKind class with _target_ (conf/mark/)")
    try:
        return builders[kind](size, channels, **options)
    except TypeError as exc:
        raise ConfigError(f"mark {kind}: {exc}".replace(f"{builders[kind].__name__}()", "option")) from exc
