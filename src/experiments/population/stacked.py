"""How a population computes its K replicas' outputs and losses on one shared batch.

On the CPU each replica's numbers are its single run's, bit for bit. A batched formula keeps
that promise only where its arithmetic is the single run's own: the line of one input (one
multiply-add per sample). Any other model, the MLP and models of your own included, runs each
replica's own forward and loss in turn on that replica's rows of the population's weights: a
batched matrix product sums in another order than the single run's, and the difference, 1e-7 in
an MLP's weights after an epoch, grows to 1e-3 under RMSprop. On an accelerator, where no run is
bit for bit, every model is batched: its formula below, or torch.func.vmap over its forward; so
it is on the CPU with hydra.launcher.exact=false, for speed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from experiments.models.base import ExperimentModule
from experiments.models.linear import LinearRegression
from experiments.models.mlp import MLPClassifier

Params = dict[str, Tensor]  # parameter name -> the K replicas' values, stacked along dim 0


def line_outputs(model: LinearRegression, params: Params, x: Tensor) -> Tensor:
    """K lines at once: weights (K, out, in), biases (K, out); K x N x out predictions."""
    weight, bias = params["linear.weight"], params["linear.bias"]
    return torch.baddbmm(
        bias.unsqueeze(1), x.flatten(1).expand(len(weight), -1, -1), weight.transpose(1, 2)
    )


class ExactLines(torch.autograd.Function):
    """K lines of one input and one output at once, as line_outputs, with each replica's weight
    gradient summed over the batch by the matrix product its single run's nn.Linear computes (addmm's
    gradient of its second matrix, input.t() @ grad_output), one product per replica. baddbmm's
    own backward (one batched product, or one product of all replicas' columns) sums in another
    order on torch 2.14's CPU kernels, 1 ulp apart in most steps' gradients. It costs 3 to 7 us
    more per replica and step (README, Speed)."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return torch.baddbmm(
            bias.unsqueeze(1), x.expand(len(weight), -1, -1), weight.transpose(1, 2)
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, Tensor]:
        (x,) = ctx.saved_tensors
        inputs = x.t()  # (1, N) @ (N, 1): one weight's gradient, as its single run's addmm takes it
        weight = torch.stack([inputs.mm(rows) for rows in grad.unbind(0)])
        return None, weight, grad.sum(1)


def exact_line_outputs(model: LinearRegression, params: Params, x: Tensor) -> Tensor:
    return ExactLines.apply(x.flatten(1), params["linear.weight"], params["linear.bias"])


def squared_error_losses(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).square().mean(dim=tuple(range(1, outputs.ndim)))


def mlp_outputs(model: MLPClassifier, params: Params, x: Tensor) -> Tensor:
    """K networks at once: each layer's K weight matrices in one batched product; K x N x 10 logits."""
    h = x.flatten(1)
    for index, layer in enumerate(model.net):
        if isinstance(layer, nn.Linear):
            weight, bias = params[f"net.{index}.weight"], params[f"net.{index}.bias"]
            h = torch.baddbmm(
                bias.unsqueeze(1),
                h if h.ndim == 3 else h.expand(len(weight), -1, -1),
                weight.transpose(1, 2),
            )
        elif not isinstance(layer, nn.Flatten):
            h = layer(h)
    return h


def cross_entropy_losses(outputs: Tensor, targets: Tensor) -> Tensor:
    k, n, classes = outputs.shape
    return (
        nn.functional.cross_entropy(
            outputs.reshape(k * n, classes), targets.repeat(k), reduction="none"
        )
        .view(k, n)
        .mean(1)
    )


# Batched formulas by model class: (outputs, losses, the outputs whose arithmetic, forward and
# backward, is the single run's for this model, or None where none is).
BATCHED: dict[type, tuple[Callable, Callable, Callable[[ExperimentModule], Callable | None]]] = {
    LinearRegression: (
        line_outputs,
        squared_error_losses,
        lambda model: exact_line_outputs if model.linear.weight.shape == (1, 1) else None,
    ),
    MLPClassifier: (mlp_outputs, cross_entropy_losses, lambda model: None),
}


def batched_form(
    model: ExperimentModule, device: torch.device, exact: bool = True
) -> tuple[Callable, Callable] | None:
    """The batched formulas to use for `model` on `device`, or None to run replica by replica
    (on the CPU, when `exact` asks for each replica's single-run arithmetic and no batched formula
    gives it)."""
    form = BATCHED.get(type(model))
    if device.type == "cpu" and exact:
        outputs = form[2](model) if form is not None else None
        return (outputs, form[1]) if outputs is not None and form is not None else None
    if form is not None:
        return form[:2]
    from torch.func import functional_call, vmap

    return (
        lambda model, params, x: vmap(lambda p: functional_call(model, p, (x,)))(params),
        lambda outputs, targets: vmap(model.loss, in_dims=(0, None))(outputs, targets),
    )


def one_by_one_outputs(model: ExperimentModule, params: Params, x: Tensor) -> Tensor:
    """Each replica's own forward on its rows: its single run's arithmetic."""
    from torch.func import functional_call

    return torch.stack(
        [
            functional_call(model, {name: value[i] for name, value in params.items()}, (x,))
            for i in range(len(next(iter(params.values()))))
        ]
    )


def one_by_one_losses(model: ExperimentModule, outputs: Tensor, targets: Tensor) -> Tensor:
    return torch.stack([model.loss(replica, targets) for replica in outputs])


def add_to_means(
    sums: tuple[Tensor, Tensor] | None, losses: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Per-sample losses [replicas, samples] added to each replica's running sum and count: the
    float operations torchmetrics' MeanMetric (nan_strategy="disable", no weights) does for one
    replica's update, in its order, so `total / count` is each one's `compute()`
    (tests/test_population_optim.py compares them). Each row is summed on its own: torch splits
    a long 1-D sum across threads, so a sum over dim 1 would add in another order."""
    values = losses.to(dtype)
    weight = torch.ones_like(values)
    products = values * weight
    if sums is None:
        zeros = torch.zeros(values.shape[0], dtype=dtype, device=values.device)
        sums = (zeros, zeros.clone())
    total, count = sums
    total += torch.stack([row.sum() for row in products])
    count += torch.stack([row.sum() for row in weight])
    return total, count
