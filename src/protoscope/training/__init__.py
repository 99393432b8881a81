"""Training small classifiers for protoscope (``protoscope-train``)."""

from .data import FashionMNISTData, ImageFolderData, TensorDataModule
from .run import TrainResult, train
from .task import ClassifierTask

__all__ = ["ClassifierTask", "FashionMNISTData", "ImageFolderData", "TensorDataModule", "TrainResult", "train"]
