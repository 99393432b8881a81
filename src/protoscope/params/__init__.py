"""Image parameterisations: a trainable tensor per row mapped to images in [0,1]."""

from .base import ImageParam
from .fourier import FourierParam
from .maco import MacoParam
from .ops import Blur, ParamOp
from .pixel import PixelParam

__all__ = ["ImageParam", "PixelParam", "FourierParam", "MacoParam", "ParamOp", "Blur"]
