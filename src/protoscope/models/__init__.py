"""Classifiers: loading, normalisation, layer selection and activation hooks."""

from .classifier import LOGITS, Classifier, Normalized, resolve_layers
from .hooks import ActivationTap, activation_path, record_activations
from .load import load_checkpoint, load_model

__all__ = [
    "LOGITS", "Classifier", "Normalized", "resolve_layers",
    "ActivationTap", "activation_path", "record_activations", "load_checkpoint", "load_model",
]
