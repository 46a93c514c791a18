"""Models: shapes, the tutorial's analytic gradient, plain-data hyperparameters."""

from __future__ import annotations

import functools

import pytest
import torch

from experiments.core.config import UserError
from experiments.data.thermometer import T_C, T_U
from experiments.models.linear import LinearRegression
from experiments.models.mlp import MLPClassifier


def test_linear_regression_maps_inputs_to_outputs():
    model = LinearRegression(input_shape=[3], num_outputs=2)
    assert model(torch.zeros(5, 3)).shape == (5, 2)
    assert model.linear.in_features == 3 and model.linear.out_features == 2


def test_linear_regression_starts_where_the_seeds_start():
    model = LinearRegression(init_weight=1.0, init_bias=0.0)
    assert model.fitted_parameters() == {"weight": 1.0, "bias": 0.0}


def test_mlp_is_the_seeds_784_28_10_net_by_default():
    model = MLPClassifier()
    linears = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 28), (28, 10)]
    assert model(torch.zeros(4, 1, 28, 28)).shape == (4, 10)


def test_mlp_hidden_layers_come_from_the_list():
    model = MLPClassifier(hidden=[64, 32])
    linears = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 64), (64, 32), (32, 10)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.net) == 2


def test_mlp_rejects_a_bad_hidden_list():
    with pytest.raises(UserError, match="model.hidden"):
        MLPClassifier(hidden=[28, 0])


def test_autograd_gradient_of_the_thermometer_loss_is_the_seeds_analytic_one():
    """dL/dw = mean(2 (t_p - t_c) t_u), dL/db = mean(2 (t_p - t_c)), as tutorial 002 derives by hand."""
    t_u = 0.1 * torch.tensor(T_U).unsqueeze(1)
    t_c = torch.tensor(T_C).unsqueeze(1)
    model = LinearRegression(init_weight=1.0, init_bias=0.0)
    loss = model.loss(model(t_u), t_c)
    loss.backward()
    t_p = 1.0 * t_u + 0.0
    assert model.linear.weight.grad.item() == pytest.approx(
        (2 * (t_p - t_c) * t_u).mean().item(), rel=1e-6
    )
    assert model.linear.bias.grad.item() == pytest.approx((2 * (t_p - t_c)).mean().item(), rel=1e-6)
    # the tutorial's first gradient
    assert model.linear.weight.grad.item() == pytest.approx(-77.6140, rel=1e-4)


def test_hyperparameters_hold_plain_data_and_no_optimizer():
    model = MLPClassifier(hidden=[28], optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    assert "optimizer" not in model.hparams
    assert dict(model.hparams) == {"input_shape": (1, 28, 28), "num_outputs": 10, "hidden": [28]}
    assert isinstance(model.configure_optimizers(), torch.optim.Adam)


def test_a_model_built_for_evaluation_cannot_train():
    with pytest.raises(RuntimeError, match="without an optimizer"):
        LinearRegression().configure_optimizers()


def test_the_loss_metric_weighs_uneven_batches_by_their_size():
    # A last batch smaller than the others (or a smaller shard on one DDP rank) must not count as much.
    model = LinearRegression()
    x, y = torch.arange(7.0).unsqueeze(1), torch.zeros(7, 1)
    for batch in ((x[:6], y[:6]), (x[6:], y[6:])):
        model.evaluation_step(batch, "val")
    with torch.no_grad():
        whole = model.loss(model(x), y)
    assert model.val_metrics["loss"].compute() == pytest.approx(whole.item(), rel=1e-6)


def test_a_callback_on_the_backward_hooks_still_sees_every_backward_pass():
    import lightning.pytorch as pl

    from experiments.data.thermometer import ThermometerDataModule

    class CountBackward(pl.Callback):
        calls = 0

        def on_after_backward(self, trainer, pl_module):
            CountBackward.calls += 1

    model = LinearRegression(optimizer=functools.partial(torch.optim.SGD, lr=1e-2))
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[CountBackward()],
    )
    trainer.fit(model, datamodule=ThermometerDataModule())
    assert CountBackward.calls == 3
