"""The path a two-parameter model (the line's w and b) takes through training, for the sweep's
paths.png: every step for the first 100, then about 500 points in all, and the last one. Each run
writes it with its training data to trajectory.json when training stops, however it stops."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl

from experiments.core.state import RunState, write_json


class ParameterPath:
    def __init__(self, runs: Any) -> None:
        self.runs = runs
        self.states: list[RunState] = runs.states
        self.every = 0  # 0: this model has no two-parameter path

    def record(self, pl_module: pl.LightningModule) -> None:
        points = self.runs.line_points(pl_module)
        step = pl_module.global_step
        for state, (w, b) in zip(self.states, points or []):
            if state.status == "running" and (not state.path or state.path[-1][0] != step):
                state.path.append((step, w, b))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.runs.line_points(pl_module) is None:
            return
        total = trainer.estimated_stepping_batches
        self.every = max(1, math.ceil(total / 500)) if math.isfinite(total) else 1
        self.record(pl_module)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
    ) -> None:
        step = pl_module.global_step
        if self.every and (step <= 100 or step % self.every == 0):
            self.record(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every:
            self.record(pl_module)
            self.write(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.every and trainer.state.fn == "fit":
            try:
                self.write(trainer)
            except OSError:  # a full disk: the exception on its way says so
                pass

    def write(self, trainer: pl.Trainer) -> None:
        splits = getattr(trainer.datamodule, "splits", None)
        if not trainer.is_global_zero or not splits:
            return
        x, y = splits["train"]
        x, y = x.flatten().tolist(), y.flatten().tolist()
        for state in self.states:
            if state.path:
                steps, w, b = zip(*state.path)
                write_json(
                    state.run_dir / "trajectory.json",
                    {"steps": list(steps), "w": list(w), "b": list(b), "x": x, "y": y},
                )
