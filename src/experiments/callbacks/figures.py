"""The run's pictures in TensorBoard's Images tab (experiments.figures.run_figures): a line's data
and fit when training ends, a classifier's confusion matrix and misclassified images after testing."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from experiments.state import RunState


class RunFigures:
    def __init__(self, states: list[RunState], loggers: list[list[object]]) -> None:
        self.states = states
        self.loggers = loggers  # each run's own loggers

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if not trainer.is_global_zero or getattr(datamodule, "splits", None) is None:
            return
        from experiments.figures import run_figures

        for i, (state, loggers) in enumerate(zip(self.states, self.loggers)):
            tensorboards = [lg for lg in loggers if isinstance(lg, TensorBoardLogger)]
            if not tensorboards or state.status not in ("running", "finished"):
                continue
            for tag, figure in run_figures(pl_module.replica(i), datamodule, stage).items():
                for logger in tensorboards:
                    logger.experiment.add_figure(tag, figure, trainer.global_step)
            for logger in tensorboards:
                logger.experiment.flush()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.draw(trainer, pl_module, "fit")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.draw(trainer, pl_module, "test")
