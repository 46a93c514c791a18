"""Pictures in TensorBoard's Images tab: the fitted line for a regression (at the end of fitting);
a confusion matrix and a grid of misclassified test images for a classifier (after testing)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger


class TensorBoardFigures(Callback):
    def __init__(self, max_misclassified: int = 32):
        self.max_misclassified = max_misclassified

    @staticmethod
    def writer(trainer: pl.Trainer):
        if not trainer.is_global_zero or trainer.datamodule is None or trainer.datamodule.splits is None:
            return None
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        return logger.experiment if logger is not None else None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = self.writer(trainer)
        x, y = trainer.datamodule.splits["train"] if writer is not None else (None, None)
        if writer is None or pl_module.task != "regression" or x.shape[1:] != (1,) or y.shape[1:] != (1,):
            return
        from experiments.figures import fit_line_figure

        line = torch.linspace(x.min().item(), x.max().item(), 50, device=x.device).unsqueeze(1)
        with torch.no_grad():
            fitted = pl_module(line)
        figure = fit_line_figure(x.cpu().numpy(), y.cpu().numpy(), line.cpu().numpy(), fitted.cpu().numpy(), "training data and fitted line")
        writer.add_figure("fit/line", figure, trainer.global_step)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = self.writer(trainer)
        if writer is None or pl_module.task != "classification":
            return
        from torchmetrics.functional.classification import multiclass_confusion_matrix

        from experiments.figures import confusion_matrix_figure, misclassified_figure

        datamodule = trainer.datamodule
        x, y = datamodule.splits["test"]
        with torch.no_grad():
            predictions = torch.cat([pl_module(chunk).argmax(1) for chunk in x.split(4096)])
        names = getattr(datamodule, "class_names", [str(i) for i in range(pl_module.num_outputs)])
        matrix = multiclass_confusion_matrix(predictions, y, num_classes=len(names)).cpu().numpy()
        writer.add_figure("test/confusion_matrix", confusion_matrix_figure(matrix, names), trainer.global_step)
        wrong = (predictions != y).nonzero().flatten()[: self.max_misclassified]
        if len(wrong):
            images = datamodule.denormalise(x[wrong]).cpu().numpy()
            figure = misclassified_figure(images, y[wrong].tolist(), predictions[wrong].tolist(), names)
            writer.add_figure("test/misclassified", figure, trainer.global_step)
        writer.flush()
