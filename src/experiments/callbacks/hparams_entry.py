"""Each run's row in TensorBoard's HParams tab, written when the run ends, its session status
saying how (finished, or aborted by an interruption, or failed by divergence or an error)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from experiments.core.state import RunState
from experiments.hparams import hparams_metrics, write_session
from experiments.loggers import RunMLFlowLogger, write_mlflow_run

# Runs that stop before their last epoch: TensorBoard's Scalars tab shows them by a
# `status/<status>` scalar at the step they stopped (filter the tags by "status").
ENDED_EARLY = ("diverged", "pruned")


def ended_early(state: RunState) -> list[tuple[dict[str, float], int]]:
    """What a run that stopped early adds to its scalars, as (values, step): a diverged run's
    last finite training loss, so that its curve reaches the step it diverged, and its status."""
    points = []
    if state.last_finite_loss is not None:
        step, value = state.last_finite_loss
        points.append(({"train/loss": value}, step))
    return [*points, ({f"status/{state.status}": 1.0}, state.steps)]


class HParamsEntry:
    def __init__(self, runs: Any, with_experiment: bool) -> None:
        self.states: list[RunState] = runs.states
        self.loggers: list[list[object]] = runs.loggers
        # A sweep writes one experiment summary for all its runs (experiments.report.summary).
        self.with_experiment = with_experiment
        self.written: set[int] = set()
        self.started = False

    def write(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        for i, (state, loggers) in enumerate(zip(self.states, self.loggers)):
            if i in self.written or state.status == "running":
                continue
            self.written.add(i)
            result = state.result()
            for logger in loggers:
                if isinstance(logger, TensorBoardLogger):
                    write_session(
                        logger,
                        {**state.hparams, "status": state.status},  # a column to sort by
                        hparams_metrics(result),
                        state.status,
                        self.with_experiment,
                    )
                elif isinstance(logger, RunMLFlowLogger):
                    write_mlflow_run(logger, state, hparams_metrics(result))
                else:
                    continue
                if state.status in ENDED_EARLY:
                    for values, step in ended_early(state):
                        logger.log_metrics(values, step=step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer)  # a run that ended since (a population's diverged or pruned runs)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = True

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.started:
            try:
                self.write(trainer)
            except OSError:  # a full disk: the exception on its way says so
                pass
