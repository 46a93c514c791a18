"""The run's pictures in TensorBoard's Images tab (experiments.report.figures.run_images): a line's data
and fit when training ends, a classifier's confusion matrix and misclassified images after testing."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from experiments.core.state import RunState


class RunImages:
    def __init__(self, runs: Any) -> None:
        self.runs = runs
        self.states: list[RunState] = runs.states
        self.loggers: list[list[object]] = runs.loggers  # each run's own loggers

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if not trainer.is_global_zero or getattr(datamodule, "splits", None) is None:
            return
        from experiments.report.figures import run_images

        rows = [
            i
            for i, (state, loggers) in enumerate(zip(self.states, self.loggers))
            if state.status in ("running", "finished")
            and any(isinstance(lg, TensorBoardLogger) for lg in loggers)
        ]
        models = [self.runs.model(i, pl_module) for i in rows]
        for i, images in zip(rows, run_images(models, datamodule, stage)):
            tensorboards = [lg for lg in self.loggers[i] if isinstance(lg, TensorBoardLogger)]
            for tag, image in images.items():
                for logger in tensorboards:
                    logger.experiment.add_image(tag, image, trainer.global_step, dataformats="HWC")
            for logger in tensorboards:
                logger.experiment.flush()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.draw(trainer, pl_module, "fit")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.draw(trainer, pl_module, "test")
