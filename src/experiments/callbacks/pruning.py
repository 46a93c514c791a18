"""Optuna's pruning for the jobs of hydra/sweeper=optuna with `hydra.sweeper.pruner` set: each
validation reports the run's monitored metric to its trial, and a run whose trial the study's
pruner stops ends there as `pruned`, with the checkpoints of that validation (a population's other
runs go on). A run is never pruned at its last validation: it trained to its end."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from experiments.core.state import RunState


class TrialPruning(pl.Callback):
    """optuna-integration's PyTorchLightningPruningCallback follows one trial per Trainer and stops
    the whole fit when it is pruned; this one reports each run of a population to its own trial and
    stops only the runs pruned."""

    def __init__(self, runs: Any, trials: list[Any | None]) -> None:
        self.runs = runs
        self.states: list[RunState] = runs.states
        self.trials = trials

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the epoch's validation and its checkpoints: a pruned run keeps its last.ckpt.
        if trainer.sanity_checking:
            return
        for i, (state, trial) in enumerate(zip(self.states, self.trials)):
            metric = state.metrics.get(state.monitor)
            if (
                trial is None
                or state.status != "running"
                or metric is None
                or metric.final_epoch != trainer.current_epoch + 1
            ):
                continue
            trial.report(metric.final, step=metric.final_epoch)
            # A run that trained to its end is not pruned there: its test and its value stand.
            last = (
                trainer.max_epochs not in (None, -1)
                and trainer.current_epoch + 1 >= trainer.max_epochs
            )
            if not last and trial.should_prune():
                reason = f"pruned by {type(trial.study.pruner).__name__} at epoch {metric.final_epoch}, {state.monitor} {metric.final:.6g}"
                self.runs.stop(i, pl_module, "pruned", reason, metric.final_epoch)
