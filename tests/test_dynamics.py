"""dynamics=basic|noise|curvature: the instruments agree with the closed-form gradient, gradient
noise and Hessian of the line's mean squared error, log every layer of the MLP, leave training
untouched, and give a population's runs the numbers their single runs get."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import (
    cli,
    compose_train,
    fake_mnist,
    population,
    read_metrics,
    scalar_history,
    train_in_process,
)
from experiments import api
from experiments.core.config import UserError, check_values
from experiments.dynamics import instruments
from experiments.models.linear import LinearRegression

THERMOMETER = [
    "experiment=thermometer",
    "dynamics=curvature",
    "dynamics.every_n_steps=50",
    "trainer.max_epochs=101",
    "trainer.check_val_every_n_epoch=50",
]


def closed_form(x: torch.Tensor, y: torch.Tensor, w: float, b: float) -> dict[str, torch.Tensor]:
    """The line's mean squared error L = mean((w x + b - y)^2) at (w, b), in float64: its
    per-sample gradients g_i = 2 (w x_i + b - y_i) (x_i, 1) and its Hessian 2 mean((x, 1)(x, 1)^T),
    the same at every (w, b)."""
    features = torch.stack([x, torch.ones_like(x)], 1)
    residual = w * x + b - y
    return {
        "samples": 2 * residual[:, None] * features,
        "hessian": 2 * features.T @ features / len(x),
    }


@pytest.fixture(scope="module")
def measured_thermometer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("thermometer") / "run"
    assert train_in_process(THERMOMETER, run_dir)["status"] == "finished"
    return run_dir


def test_the_thermometers_curvature_is_its_closed_form_hessian_at_every_measured_step(
    measured_thermometer,
):
    logged = scalar_history(measured_thermometer)
    data = json.loads((measured_thermometer / "trajectory.json").read_text())
    x, y = (
        torch.tensor(data["x"], dtype=torch.float64),
        torch.tensor(data["y"], dtype=torch.float64),
    )
    hessian = closed_form(x, y, 1.0, 0.0)["hessian"]
    steps = [s for s, _ in logged["dynamics/hessian_top_eigenvalue"]]
    assert steps == [0, 50, 100]
    # float32 Hessian-vector products against float64: agreement to 1e-5 relative
    for tag, exact in {
        "dynamics/hessian_top_eigenvalue": torch.linalg.eigvalsh(hessian).max().item(),
        "dynamics/hessian_trace": hessian.trace().item(),
        "dynamics/hessian_top_eigenvalue/linear.weight": hessian[0, 0].item(),
        "dynamics/hessian_top_eigenvalue/linear.bias": 2.0,
        "dynamics/hessian_trace/linear.weight": hessian[0, 0].item(),
        "dynamics/hessian_trace/linear.bias": 2.0,
        "dynamics/stability_threshold": 2 / 0.01,  # plain SGD at lr 0.01
    }.items():
        assert [v for _, v in logged[tag]] == pytest.approx([exact] * 3, rel=1e-5), tag


def test_the_thermometers_gradient_noise_and_update_are_their_closed_forms(measured_thermometer):
    logged = scalar_history(measured_thermometer)
    data = json.loads((measured_thermometer / "trajectory.json").read_text())
    x, y = (
        torch.tensor(data["x"], dtype=torch.float64),
        torch.tensor(data["y"], dtype=torch.float64),
    )
    path = data["steps"], data["w"], data["b"]
    for step in (0, 50, 100):
        w, b = (path[1][path[0].index(step)], path[2][path[0].index(step)])
        samples = closed_form(x, y, w, b)["samples"]
        gradient = samples.mean(0)
        spread = (samples - gradient).square().sum() / (len(x) - 1)  # tr(Sigma)
        value = {tag: dict(points)[step] for tag, points in logged.items() if tag.startswith("dyn")}
        assert value["dynamics/grad_norm"] == pytest.approx(gradient.norm().item(), rel=1e-5)
        assert value["dynamics/grad_norm/linear.bias"] == pytest.approx(
            abs(gradient[1].item()), rel=1e-5
        )
        assert value["dynamics/noise_scale"] == pytest.approx(
            (spread / gradient.square().sum()).item(), rel=1e-4
        )
        assert value["dynamics/norm_test"] == pytest.approx(
            (spread / (len(x) * gradient.square().sum())).item(), rel=1e-4
        )
        # plain SGD: the update is lr times the gradient, the effective learning rate lr itself
        assert value["dynamics/update_norm"] == pytest.approx(
            0.01 * gradient.norm().item(), rel=1e-5
        )
        assert value["dynamics/effective_lr"] == pytest.approx(0.01, rel=1e-5)
        assert value["dynamics/weight_norm"] == pytest.approx(math.hypot(w, b), rel=1e-6)
        assert value["dynamics/distance"] == pytest.approx(
            math.hypot(w - 1.0, b - 0.0), rel=1e-5, abs=1e-12
        )


def test_the_instruments_reach_metrics_json_the_api_history_and_the_weights_path(
    measured_thermometer,
):
    record = read_metrics(measured_thermometer)
    logged = scalar_history(measured_thermometer)
    summary = record["dynamics"]["dynamics/grad_norm"]
    values = [v for _, v in logged["dynamics/grad_norm"]]
    assert summary["count"] == 3 and summary["first_step"] == 0 and summary["final_step"] == 100
    assert summary["final"] == pytest.approx(values[-1]) and summary["max"] == pytest.approx(
        max(values)
    )
    assert not any(k.startswith("dynamics/") for k in record["metrics"])  # no "best" gradient norm
    history = api.load(measured_thermometer).history
    assert history["dynamics/hessian_trace"].dropna().index.tolist() == [0, 50, 100]
    kept = torch.load(measured_thermometer / "weights_path.pt", weights_only=True)
    assert kept["steps"] == [0, 50, 100, 101] and kept["names"] == ["linear.weight", "linear.bias"]
    assert kept["weights"][0].tolist() == [1.0, 0.0] == kept["initial"].tolist()
    assert kept["weights"][-1].tolist() == pytest.approx(
        [record["parameters"]["weight"], record["parameters"]["bias"]]
    )


def test_instruments_leave_the_training_untouched(measured_thermometer, tmp_path: Path):
    plain = train_in_process([o for o in THERMOMETER if "dynamics" not in o], tmp_path / "plain")
    measured = read_metrics(measured_thermometer)
    assert plain["parameters"] == measured["parameters"]
    assert plain["metrics"] == measured["metrics"]


@pytest.mark.parametrize("tier", ["basic", "noise", "curvature"])
def test_every_tier_logs_every_layer_of_the_mlp(tier: str, tmp_path: Path):
    root = fake_mnist(tmp_path / "digits", n_train=200, n_test=40)
    run_dir = tmp_path / "run"
    overrides = [
        "experiment=fashion_mnist",
        f"data.root={root}",
        "data.val_size=40",
        "data.batch_size=32",
        "trainer.max_epochs=1",
        f"dynamics={tier}",
        "dynamics.every_n_steps=2",
        "dynamics.histograms=true",
    ]
    assert train_in_process(overrides, run_dir)["status"] == "finished"
    layers = ["net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias"]
    kinds = {
        "basic": [
            "grad_norm",
            "weight_norm",
            "update_norm",
            "update_ratio",
            "effective_lr",
            "distance",
        ],
        "noise": ["grad_snr", "norm_test"],
        "curvature": ["hessian_top_eigenvalue", "hessian_trace"],
    }
    wanted = [
        k for t in kinds for k in kinds[t] if t == "basic" or t == tier or tier == "curvature"
    ]
    logged = scalar_history(run_dir)
    for kind in wanted:
        for tag in [f"dynamics/{kind}", *(f"dynamics/{kind}/{layer}" for layer in layers)]:
            assert [s for s, _ in logged[tag]] == [0, 2, 4], tag
            assert all(math.isfinite(v) for _, v in logged[tag]), tag
    others = {t for t in logged if t.startswith("dynamics/")} - {
        f"dynamics/{k}{suffix}"
        for k in wanted
        for suffix in ["", *(f"/{layer}" for layer in layers)]
    }
    assert others == ({"dynamics/noise_scale"} if tier != "basic" else set())
    events = EventAccumulator(str(run_dir), size_guidance={"histograms": 0})
    events.Reload()
    assert {f"dynamics/weights/{layer}" for layer in layers} <= set(events.Tags()["histograms"])
    history = api.load(run_dir).history
    assert {f"dynamics/grad_norm/{layer}" for layer in layers} <= set(history.columns)


def test_a_populations_instruments_are_its_single_runs(tmp_path: Path):
    root = fake_mnist(tmp_path / "digits", n_train=200, n_test=40)
    base = [
        "experiment=mnist",
        f"data.root={root}",
        "data.val_size=40",
        "data.batch_size=32",
        "trainer.max_epochs=1",
        "trainer.deterministic=true",
        "dynamics=curvature",
        "dynamics.every_n_steps=3",
    ]
    jobs = [
        [*base, "optimizer=adam", "optimizer.lr=0.001"],
        [*base, "optimizer=sgd", "optimizer.lr=0.05"],
    ]
    together = population(jobs, tmp_path / "population")
    for i, overrides in enumerate(jobs):
        single = train_in_process(overrides, tmp_path / f"alone{i}")
        assert together[i]["dynamics"] == single["dynamics"]
        mine, alone = (
            scalar_history(tmp_path / "population" / f"job{i}"),
            scalar_history(tmp_path / f"alone{i}"),
        )
        tags = sorted(t for t in alone if t.startswith("dynamics/"))
        assert tags and tags == sorted(t for t in mine if t.startswith("dynamics/"))
        assert all(mine[t] == alone[t] for t in tags)


def test_lanczos_and_hutchinson_match_a_wide_lines_closed_form_hessian():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 20, generator=generator) * torch.linspace(0.2, 3.0, 20)
    y = torch.randn(64, 1, generator=generator)
    model = LinearRegression(input_shape=(20,))
    features = torch.cat([x, torch.ones(64, 1)], 1).double()
    exact = 2 * features.T @ features / 64
    params = dict(model.named_parameters())
    hessian = instruments.Curvature(model, params, x, y)
    top = hessian.top_eigenvalues(25, torch.Generator().manual_seed(1))  # 21 parameters: exact
    assert top[0] == pytest.approx(torch.linalg.eigvalsh(exact).max().item(), rel=1e-5)
    assert top[1] == pytest.approx(torch.linalg.eigvalsh(exact[:20, :20]).max().item(), rel=1e-5)
    assert top[2] == pytest.approx(2.0, rel=1e-5)
    # Hutchinson's estimate with m Rademacher vectors: variance 2 sum_{i != j} H_ij^2 / m
    m = 200
    estimate = hessian.traces(m, torch.Generator().manual_seed(2))[0]
    off = exact - torch.diag(exact.diag())
    sd = math.sqrt(2 * off.square().sum().item() / m)
    assert abs(estimate - exact.trace().item()) < 4 * sd
    assert hessian.traces(21, torch.Generator())[0] == pytest.approx(exact.trace().item(), rel=1e-5)


@pytest.mark.parametrize(
    ("override", "sentence"),
    [
        (
            "dynamics.tiers=[noise]",
            "dynamics.tiers must be a list of basic, noise, curvature with basic among them, got ['noise'].",
        ),
        ("dynamics.every_n_steps=0", "dynamics.every_n_steps must be a positive integer, got 0."),
        ("dynamics.noise_samples=1", "dynamics.noise_samples must be an integer of 2 or more"),
    ],
)
def test_a_bad_instrument_setting_is_one_sentence(override: str, sentence: str, tmp_path: Path):
    cfg = compose_train(["dynamics=curvature", override], tmp_path / "run")
    with pytest.raises(UserError) as refused:
        check_values(cfg, [override])
    assert str(refused.value).startswith(sentence)


def test_a_sweeps_dashboard_and_dynamics_png_band_the_instruments_over_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    done = api.sweep(
        "experiment=thermometer",
        "dynamics=basic",
        "dynamics.every_n_steps=50",
        "trainer.max_epochs=200",
        "trainer.check_val_every_n_epoch=100",
        "model.init_weight=null",
        "model.init_bias=null",
        "seed=0,1",
        launcher="vectorized",
    )
    sweep = done.sweep_dir
    assert (sweep / "dynamics.png").is_file() and "dynamics" in done.pictures
    seeds = [scalar_history(sweep / f"seed={s}")["dynamics/grad_norm"] for s in (0, 1)]
    (configuration,) = [run for run in (sweep / "dashboard").iterdir() if run.name != "sweep"]
    logged = scalar_history(configuration)
    band = {tag: logged[f"dynamics/grad_norm/{tag}"] for tag in ("mean", "lower", "upper")}
    steps = [s for s, _ in seeds[0]]
    assert [s for s, _ in band["mean"]] == steps == [0, 50, 100, 150]
    for k in range(len(steps)):
        pair = [seeds[0][k][1], seeds[1][k][1]]
        assert pair[0] != pair[1]
        assert band["mean"][k][1] == pytest.approx(sum(pair) / 2, rel=1e-6)
        assert band["lower"][k][1] == pytest.approx(min(pair), rel=1e-6)
        assert band["upper"][k][1] == pytest.approx(max(pair), rel=1e-6)


def test_a_resumed_run_measures_its_distance_from_where_it_first_started(tmp_path: Path):
    first = [
        "experiment=thermometer",
        "dynamics=basic",
        "dynamics.every_n_steps=50",
        "trainer.max_epochs=100",
        "trainer.check_val_every_n_epoch=50",
        "hydra.run.dir=run",
    ]
    assert cli(first, tmp_path).returncode == 0
    assert cli(["resume=run", "trainer.max_epochs=200"], tmp_path).returncode == 0
    run_dir = tmp_path / "run"
    kept = torch.load(run_dir / "weights_path.pt", weights_only=True)
    assert kept["steps"] == [0, 50, 100, 150, 200] and kept["initial"].tolist() == [1.0, 0.0]
    distance = dict(scalar_history(run_dir)["dynamics/distance"])
    for k, step in enumerate(kept["steps"][:-1]):
        w, b = kept["weights"][k].tolist()
        assert distance[step] == pytest.approx(math.hypot(w - 1.0, b), rel=1e-5, abs=1e-12)
    assert read_metrics(run_dir)["dynamics"]["dynamics/distance"]["count"] == 4
