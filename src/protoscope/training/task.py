"""The LightningModule that trains a classifier on images in [0, 1]."""

from __future__ import annotations

from typing import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ..models.classifier import Normalized


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; float images pass through."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def augment(images: torch.Tensor, hflip: bool = False, max_shift: int = 0) -> torch.Tensor:
    """Per-image random horizontal flips and integer translations (zero fill)."""
    n, _, h, w = images.shape
    if hflip:
        flip = torch.rand(n, device=images.device) < 0.5
        images = torch.where(flip.view(n, 1, 1, 1), images.flip(-1), images)
    if max_shift > 0:
        shift = torch.randint(-max_shift, max_shift + 1, (n, 2), device=images.device).float()
        theta = torch.zeros(n, 2, 3, device=images.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = 2 * shift[:, 0] / w
        theta[:, 1, 2] = 2 * shift[:, 1] / h
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return images


class ClassifierTask(pl.LightningModule):
    """Cross-entropy training of ``net`` on [0,1] images, normalised exactly like :class:`Normalized`.

    ``self.net`` is the bare network (what the checkpoint holds); ``self.normalize`` applies
    ``(x - mean) / std`` so ``net(normalize(x)) == Normalized(net, mean, std)(x)``.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        schedule: str = "one_cycle",
        hflip: bool = False,
        max_shift: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.normalize = Normalized(nn.Identity(), mean, std)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_class_acc = MulticlassAccuracy(num_classes, average="none")
        self.test_results: dict[str, object] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for images in [0, 1] (uint8 images are scaled first)."""
        return self.net(self.normalize(to_unit(images)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        images, labels = batch
        images = augment(to_unit(images), self.hparams.hflip, self.hparams.max_shift)
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        images, labels = batch
        logits = self(images)
        self.val_acc(logits, labels)
        self.log("val/loss", F.cross_entropy(logits, labels), on_epoch=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        images, labels = batch
        logits = self(images)
        self.test_acc.update(logits, labels)
        self.test_class_acc.update(logits, labels)
        self.log("test/loss", F.cross_entropy(logits, labels), on_epoch=True, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        accuracy = float(self.test_acc.compute())
        self.test_results = {
            "accuracy": accuracy,
            "per_class": [float(a) for a in self.test_class_acc.compute()],
        }
        self.log("test/acc", accuracy)
        self.test_acc.reset()
        self.test_class_acc.reset()

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.schedule == "constant":
            return opt
        if self.hparams.schedule != "one_cycle":
            from ..errors import ConfigError

            raise ConfigError(f"schedule must be 'one_cycle' or 'constant', got {self.hparams.schedule!r}")
        steps = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=max(steps, 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
