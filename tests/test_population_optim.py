"""The population's optimizer steps every replica exactly as that replica's own torch.optim
optimizer would: bit for bit on the CPU, step after step, for every optimizer and setting the
package offers, with its state saved and loaded in torch's own format."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from experiments.population.optim import AdamRule, PopulationOptimizer, TorchRule, rule_for

SHAPES = [torch.Size([3, 2]), torch.Size([3])]
SETTINGS = {
    "sgd": [dict(lr=0.1), dict(lr=0.01, weight_decay=0.1), dict(lr=0.03, maximize=True)],
    "momentum": [
        dict(lr=0.01, momentum=0.9),
        dict(lr=0.05, momentum=0.8, dampening=0.8),
        dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.01),
    ],
    "adagrad": [
        dict(lr=0.1),
        dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1, eps=1e-8),
        dict(lr=0.2, weight_decay=0.05),
    ],
    "rmsprop": [
        dict(lr=0.01),
        dict(lr=0.01, alpha=0.8, momentum=0.9),
        dict(lr=0.003, centered=True, weight_decay=0.01, eps=1e-6),
    ],
    "adam": [
        dict(lr=0.1),
        dict(lr=0.01, betas=(0.8, 0.99), amsgrad=True),
        dict(lr=0.001, weight_decay=0.1),
    ],
    "adamw": [dict(lr=0.1), dict(lr=0.01, weight_decay=0.05, amsgrad=True)],
}
CLASSES = {
    "sgd": torch.optim.SGD,
    "momentum": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def factories(names: list[str]) -> list:
    return [
        functools.partial(CLASSES[name], **settings)
        for name in names
        for settings in SETTINGS[name]
    ]


def run_both(makers: list, steps: int = 30, seed: int = 0):
    """The population's rows and the same replicas stepped one by one with torch.optim."""
    generator = torch.Generator().manual_seed(seed)
    k = len(makers)
    start = torch.randn(k, sum(s.numel() for s in SHAPES), generator=generator)
    flat = nn.Parameter(start.clone())
    population = PopulationOptimizer(flat, SHAPES, makers)
    singles = [
        [nn.Parameter(t.clone()) for t in torch.split(start[i], [s.numel() for s in SHAPES])]
        for i in range(k)
    ]
    singles = [
        [p.view(s).detach().clone().requires_grad_() for p, s in zip(params, SHAPES)]
        for params in singles
    ]
    references = [make(params) for make, params in zip(makers, singles)]
    for _ in range(steps):
        grad = torch.randn(k, flat.shape[1], generator=generator)
        flat.grad = grad.clone()
        population.step()
        for i, (optimizer, params) in enumerate(zip(references, singles)):
            for p, g in zip(params, torch.split(grad[i], [s.numel() for s in SHAPES])):
                p.grad = g.view(p.shape).clone()
            optimizer.step()
    return flat, population, singles, references


@pytest.mark.parametrize(
    "names",
    [
        ["sgd"],
        ["momentum"],
        ["adagrad"],
        ["rmsprop"],
        ["adam"],
        ["adamw"],
        ["sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"],
    ],
)
def test_every_row_is_its_own_torch_optimizer_bit_for_bit(names: list[str]):
    flat, population, singles, references = run_both(factories(names))
    for i, params in enumerate(singles):
        assert torch.equal(flat.detach()[i], torch.cat([p.detach().reshape(-1) for p in params])), (
            names,
            i,
        )
        mine, theirs = population.replica_state_dict(i), references[i].state_dict()
        assert mine["param_groups"] == theirs["param_groups"]
        assert mine["state"].keys() == theirs["state"].keys()
        for key, state in theirs["state"].items():
            assert state.keys() == mine["state"][key].keys()
            for name, value in state.items():
                assert torch.equal(
                    torch.as_tensor(mine["state"][key][name]), torch.as_tensor(value)
                ), (names, i, name)


def test_vectorised_classes_share_a_rule_and_others_step_through_torch():
    flat = nn.Parameter(torch.zeros(4, 9))
    population = PopulationOptimizer(
        flat,
        SHAPES,
        [
            functools.partial(torch.optim.Adam, lr=0.1),
            functools.partial(torch.optim.Adam, lr=0.01),
            functools.partial(torch.optim.Adamax, lr=0.1),
            functools.partial(torch.optim.Adam, lr=0.1, capturable=False, differentiable=True),
        ],
    )
    assert [type(rule) for rule in population.rules] == [AdamRule, TorchRule, TorchRule]
    assert [(rule.start, rule.stop) for rule in population.rules] == [(0, 2), (2, 3), (3, 4)]
    assert rule_for(torch.optim.LBFGS([nn.Parameter(torch.zeros(1))])) is TorchRule


def test_an_optimizer_without_a_rule_is_still_exactly_torchs():
    makers = [
        functools.partial(torch.optim.Adamax, lr=0.05),
        functools.partial(torch.optim.NAdam, lr=0.01),
        functools.partial(torch.optim.Adam, lr=0.02),
    ]
    flat, _, singles, _ = run_both(makers)
    for i, params in enumerate(singles):
        assert torch.equal(flat.detach()[i], torch.cat([p.detach().reshape(-1) for p in params]))


def test_a_frozen_row_keeps_its_weights_and_no_other_row_moves_by_a_bit():
    makers = factories(["adam", "rmsprop"])
    flat, population, _, _ = run_both(makers, steps=5, seed=1)
    reference_flat, reference, _, _ = run_both(makers, steps=5, seed=1)
    kept = flat.detach()[2].clone()
    population.freeze([2])
    generator = torch.Generator().manual_seed(7)
    for _ in range(10):
        grad = torch.randn(flat.shape, generator=generator)
        poisoned = grad.clone()
        poisoned[2] = float("nan")  # a diverged row's gradient
        flat.grad, reference_flat.grad = poisoned, grad
        population.step()
        reference.step()
    assert torch.equal(flat.detach()[2], kept)
    others = [i for i in range(len(makers)) if i != 2]
    assert torch.equal(flat.detach()[others], reference_flat.detach()[others])


def test_state_saved_per_replica_loads_back_and_continues_identically():
    makers = factories(["momentum", "adam", "adagrad", "rmsprop"])
    flat, population, _, _ = run_both(makers, steps=12)
    saved = {
        "replicas": [population.replica_state_dict(k) for k in range(len(makers))]
    }  # what the runs' checkpoints hold
    twin = nn.Parameter(flat.detach().clone())
    resumed = PopulationOptimizer(twin, SHAPES, makers)
    resumed.load_state_dict(saved)
    generator = torch.Generator().manual_seed(3)
    for _ in range(8):
        grad = torch.randn(flat.shape, generator=generator)
        flat.grad, twin.grad = grad.clone(), grad.clone()
        population.step()
        resumed.step()
    assert torch.equal(flat.detach(), twin.detach())


def test_a_schedule_changing_a_replicas_learning_rate_reaches_its_row():
    makers = [
        functools.partial(torch.optim.SGD, lr=0.1),
        functools.partial(torch.optim.SGD, lr=0.1),
    ]
    flat = nn.Parameter(torch.zeros(2, 9))
    population = PopulationOptimizer(flat, SHAPES, makers)
    schedule = torch.optim.lr_scheduler.StepLR(population.replicas[1], step_size=1, gamma=0.5)
    for _ in range(3):
        flat.grad = torch.ones(2, 9)
        population.step()
        schedule.step()
        population.settings_changed()  # as the population module does after stepping schedules
    assert flat.detach()[0, 0].item() == pytest.approx(-0.3) and flat.detach()[
        1, 0
    ].item() == pytest.approx(-(0.1 + 0.05 + 0.025))


def stacked_case(model_class, **kwargs):
    """A model, K = 3 replicas' stacked parameters (views of one flat tensor) and a batch."""
    torch.manual_seed(0)
    models = [model_class(**kwargs) for _ in range(3)]
    names = [name for name, _ in models[0].named_parameters()]
    params = {
        name: torch.stack([dict(m.named_parameters())[name].detach() for m in models])
        for name in names
    }
    return models[0], params


def test_each_replicas_outputs_and_loss_are_its_single_runs_bit_for_bit_or_batched_within_rounding():
    from experiments.models.linear import LinearRegression
    from experiments.models.mlp import MLPClassifier
    from experiments.population.stacked import batched_form, one_by_one_losses, one_by_one_outputs

    cpu, accelerator = torch.device("cpu"), torch.device("cuda")  # only the device's type is read
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    model, params = stacked_case(MLPClassifier)
    single = [
        model.loss(out, y)
        for out in (
            torch.func.functional_call(model, {k: v[i] for k, v in params.items()}, (x,))
            for i in range(3)
        )
    ]
    assert batched_form(model, cpu) is None  # no exact batched MLP: replica by replica
    assert torch.equal(
        one_by_one_losses(model, one_by_one_outputs(model, params, x), y), torch.stack(single)
    )
    for form in (batched_form(model, cpu, exact=False), batched_form(model, accelerator)):
        outputs, losses = form
        assert torch.allclose(losses(outputs(model, params, x), y), torch.stack(single), rtol=1e-5)
    line, line_params = stacked_case(LinearRegression)
    outputs, losses = batched_form(line, cpu)  # a line of one input: batched, and exact
    xs, ts = torch.randn(50, 1), torch.randn(50, 1)
    singles = torch.stack(
        [
            line.loss(
                torch.func.functional_call(line, {k: v[i] for k, v in line_params.items()}, (xs,)),
                ts,
            )
            for i in range(3)
        ]
    )
    assert torch.equal(losses(outputs(line, line_params, xs), ts), singles)
    wide, _ = stacked_case(LinearRegression, input_shape=(3,))
    assert batched_form(wide, cpu) is None  # several inputs: a sum whose order could differ


def test_a_model_without_a_batched_formula_is_vmapped_on_an_accelerator():
    from experiments.models.linear import LinearRegression
    from experiments.population.stacked import batched_form

    class Cubic(LinearRegression):
        def forward(self, x):
            return super().forward(x) ** 3

    model, params = stacked_case(Cubic)
    x, t = torch.randn(20, 1), torch.randn(20, 1)
    outputs, losses = batched_form(model, torch.device("cuda"))
    expected = torch.stack(
        [
            model.loss(
                torch.func.functional_call(model, {k: v[i] for k, v in params.items()}, (x,)), t
            )
            for i in range(3)
        ]
    )
    assert torch.allclose(losses(outputs(model, params, x), t), expected, rtol=1e-6)


def test_the_batched_mean_losses_are_each_replicas_torchmetrics_value_bit_for_bit():
    """The population adds every replica's losses to its mean at once (stacked.add_to_means);
    each mean must be what that replica's own `loss` metric (a torchmetrics MeanMetric, updated
    as a single run updates it) computes, to the bit."""
    from experiments.models.linear import LinearRegression
    from experiments.population.stacked import add_to_means

    torch.manual_seed(0)
    replicas = 4
    models = [LinearRegression() for _ in range(replicas)]
    nothing = torch.zeros(0)
    sums = None
    # a training epoch's steps (losses per step, uneven batch sizes: 60000 samples, which torch
    # sums in chunks across threads), then evaluation batches
    sizes = torch.tensor([128] * 468 + [77, 19])
    steps = torch.rand(replicas, len(sizes)) * 10 ** torch.randint(-3, 4, (replicas, 1))
    for i, model in enumerate(models):
        model.update_metrics("train", steps[i], sizes, nothing, nothing)
    sums = add_to_means(sums, steps.repeat_interleave(sizes, dim=1), torch.float32)
    for n in (11, 48000, 3):
        batch = torch.rand(replicas) * 100
        batch[0] = torch.nan if n == 3 else batch[0]  # a diverged replica stays NaN
        for i, model in enumerate(models):
            model.update_metrics("train", batch[i], n, nothing, nothing)
        sums = add_to_means(sums, batch.unsqueeze(1).expand(-1, n), torch.float32)
    total, count = sums
    means = (total / count).tolist()
    expected = [model.train_metrics["loss"].compute().item() for model in models]
    assert means[1:] == expected[1:] and all(map(math.isnan, (means[0], expected[0])))
    assert len(set(means[1:])) == replicas - 1  # the replicas' values differ


@pytest.mark.parametrize("replicas", [2, 16, 40])
def test_a_populations_lines_have_each_single_runs_gradients_bit_for_bit(replicas: int):
    """The population's line (one input) gives each replica the loss and gradients its single
    run's nn.Linear and mse_loss give, bit for bit, at batch sizes where a batched matrix product
    sums in another order (torch 2.14's CPU kernels: almost every gradient 1 ulp apart)."""
    import torch.nn.functional as F

    from experiments.population.stacked import exact_line_outputs, squared_error_losses

    generator = torch.Generator().manual_seed(replicas)
    for samples in (16, 22, 100):
        x = torch.randn(samples, 1, generator=generator) * 10 + 50
        y = torch.randn(samples, 1, generator=generator) * 3 + 250
        weight = torch.randn(replicas, 1, 1, generator=generator).requires_grad_()
        bias = torch.randn(replicas, 1, generator=generator).requires_grad_()
        params = {"linear.weight": weight, "linear.bias": bias}
        losses = squared_error_losses(exact_line_outputs(None, params, x), y)
        losses.sum().backward()
        for k in range(replicas):
            line = nn.Linear(1, 1)
            with torch.no_grad():
                line.weight.copy_(weight[k])
                line.bias.copy_(bias[k])
            loss = F.mse_loss(line(x), y)
            loss.backward()
            assert torch.equal(losses[k], loss)
            assert torch.equal(weight.grad[k], line.weight.grad), (samples, k)
            assert torch.equal(bias.grad[k], line.bias.grad), (samples, k)
    # a line of several outputs (or inputs) runs replica by replica: only the 1-by-1 line is exact
    from experiments.models.linear import LinearRegression
    from experiments.population.stacked import batched_form

    cpu = torch.device("cpu")
    assert batched_form(LinearRegression(), cpu)[0] is exact_line_outputs
    assert batched_form(LinearRegression(num_outputs=2), cpu) is None
    assert batched_form(LinearRegression(input_shape=(2,)), cpu) is None
