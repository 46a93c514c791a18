"""Linear regression, y = w x + b, fitted by mean squared error: the model of all three seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from experiments.models.base import ExperimentModule, OptimizerFactory


class LinearRegression(ExperimentModule):
    task = "regression"
    needs = "regression data (data=synthetic or data=thermometer)"

    def __init__(
        self,
        input_shape: Sequence[int] = (1,),
        num_outputs: int = 1,
        optimizer: OptimizerFactory | None = None,
        scheduler: dict[str, Any] | None = None,
        init_weight: float | None = None,
        init_bias: float | None = None,
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.linear = nn.Linear(math.prod(input_shape), num_outputs)
        # The tutorials start from w = 1, b = 0; null keeps PyTorch's random initialisation.
        if init_weight is not None:
            nn.init.constant_(self.linear.weight, init_weight)
        if init_bias is not None:
            nn.init.constant_(self.linear.bias, init_bias)

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
