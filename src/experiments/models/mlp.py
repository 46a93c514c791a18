"""A multilayer perceptron for 28x28 images: flatten, hidden Linear+ReLU layers, 10 logits.

The default hidden=[28] is the tutorial's 784-28-10 MnistNet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from experiments.core.config import UserError, positive_int
from experiments.models.base import ExperimentModule, OptimizerFactory


class MLPClassifier(ExperimentModule):
    task = "classification"
    needs = "image classification data (data=mnist or data=fashion_mnist)"

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_outputs: int = 10,
        hidden: Sequence[int] = (28,),
        optimizer: OptimizerFactory | None = None,
        scheduler: dict[str, Any] | None = None,
    ):
        if not all(positive_int(h) for h in hidden):
            raise UserError(
                f"model.hidden must be a list of positive layer widths such as [28] or [128, 64], got {list(hidden)!r}."
            )
        self.num_outputs = num_outputs
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        widths = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip(widths, widths[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_outputs))
        self.net = nn.Sequential(*layers)

    def extra_metrics(self) -> dict[str, Metric]:
        return {
            "acc": MulticlassAccuracy(num_classes=self.num_outputs, average="micro"),
            "f1": MulticlassF1Score(num_classes=self.num_outputs, average="macro"),
        }

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets)
