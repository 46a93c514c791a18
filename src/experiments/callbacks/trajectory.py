"""Record the path of a two-parameter model (the line's w and b) through training, for paths.png.

Two numbers a step for the first 100 steps, then thinned to about `max_points` in all, plus the training data, so the sweep
summary can draw the loss surface and every job's path on it without rerunning anything.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class ParameterTrajectory(Callback):
    def __init__(self, path: str, max_points: int = 500):
        self.path = Path(path)
        self.max_points = max_points
        self.steps: list[int] = []
        self.points: list[tuple[float, float]] = []
        self.every = 1
        self.active = False

    @staticmethod
    def parameters(pl_module: pl.LightningModule) -> list:
        return [p for p in pl_module.parameters() if p.requires_grad]

    def applies(self, pl_module: pl.LightningModule) -> bool:
        return sum(p.numel() for p in self.parameters(pl_module)) == 2

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        self.every = max(1, math.ceil(total / self.max_points)) if math.isfinite(total) else 1
        self.active = self.applies(pl_module)
        if self.active and not self.steps:
            self.record(trainer.global_step, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Every step at first, where the optimizers differ most, then thinned.
        if self.active and (trainer.global_step <= 100 or trainer.global_step % self.every == 0):
            self.record(trainer.global_step, pl_module)

    def record(self, step: int, pl_module: pl.LightningModule) -> None:
        w, b = (p.detach().flatten()[0].item() for p in self.parameters(pl_module))
        self.steps.append(step)
        self.points.append((w, b))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.save(trainer, pl_module)

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self.active:
            return
        if self.steps[-1:] != [trainer.global_step]:
            self.record(trainer.global_step, pl_module)
        x, y = trainer.datamodule.splits["train"] if trainer.datamodule is not None else ([], [])
        data = {
            "steps": self.steps,
            "w": [w for w, _ in self.points],
            "b": [b for _, b in self.points],
            "x": [float(v) for v in x.flatten().tolist()] if len(x) else [],
            "y": [float(v) for v in y.flatten().tolist()] if len(y) else [],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, allow_nan=True))
        os.replace(tmp, self.path)
