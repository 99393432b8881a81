"""A small CNN for Fashion-MNIST-sized images and for fast tests."""

from __future__ import annotations

from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class SmallCNN(nn.Module):
    """Three conv stages (each conv-BN-ReLU, then 2x down-sampling) and a linear head.

    Accepts any input size >= 8 pixels thanks to global average pooling.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(_block(in_channels, width), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(_block(width, 2 * width), nn.MaxPool2d(2))
        self.stage3 = nn.Sequential(_block(2 * width, 4 * width), _block(4 * width, 4 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.head(self.pool(x).flatten(1))
