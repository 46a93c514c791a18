"""Linear regression, y = w x + b, fitted by mean squared error: the model of all three seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from experiments.models.base import ExperimentModule, OptimizerFactory


class LinearRegression(ExperimentModule):
    """A line with one input and one output also records its path (step, w, b) through training:
    every step for the first 100, then about 500 points in all, for the sweep's paths.png."""

    task = "regression"
    needs = "regression data (data=synthetic or data=thermometer)"

    def __init__(
        self,
        input_shape: Sequence[int] = (1,),
        num_outputs: int = 1,
        optimizer: OptimizerFactory | None = None,
        init_weight: float | None = None,
        init_bias: float | None = None,
    ):
        super().__init__(optimizer)
        self.save_hyperparameters(ignore=["optimizer"])
        self.linear = nn.Linear(math.prod(input_shape), num_outputs)
        # The seeds start from w = 1, b = 0; null keeps PyTorch's random initialisation.
        if init_weight is not None:
            nn.init.constant_(self.linear.weight, init_weight)
        if init_bias is not None:
            nn.init.constant_(self.linear.bias, init_bias)
        self.parameter_path: list[tuple[int, float, float]] = []
        self._path_every = 0  # 0: not recording

    def on_train_start(self) -> None:
        total = self.trainer.estimated_stepping_batches
        if self.linear.weight.numel() == 1:
            self._path_every = max(1, math.ceil(total / 500)) if math.isfinite(total) else 1
            if not self.parameter_path:
                self.record_path()

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        step = self.global_step
        if self._path_every and (step <= 100 or step % self._path_every == 0):
            self.record_path()

    def on_train_end(self) -> None:
        if self._path_every and self.parameter_path[-1][0] != self.global_step:
            self.record_path()

    def record_path(self) -> None:
        self.parameter_path.append((self.global_step, self.linear.weight.item(), self.linear.bias.item()))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(outputs, targets)

    def fitted_parameters(self) -> dict[str, float | list]:
        """The line's weight and bias as plain numbers (lists when there are several inputs or outputs)."""
        weight, bias = self.linear.weight.detach().cpu(), self.linear.bias.detach().cpu()
        if weight.numel() == 1:
            return {"weight": weight.item(), "bias": bias.item()}
        return {"weight": weight.tolist(), "bias": bias.tolist()}
