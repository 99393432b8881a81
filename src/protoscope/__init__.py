"""protoscope: data-independent, quantitatively checked prototypes of image classifiers."""

__version__ = "0.1.0"
