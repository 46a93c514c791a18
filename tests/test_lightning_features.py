"""Lightning's standard features through the configs: learning-rate schedules, gradient
accumulation, metrics whose direction comes from torchmetrics; the package as a built wheel; the
README's extension example, run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_train, only_run_dir, read_metrics, train_in_process
from experiments.callbacks.recorder import MetricHistory
from experiments.core.state import RunInfo, RunState
from experiments.models.mlp import MLPClassifier

REPO = Path(__file__).resolve().parents[1]


def lr_curve(run_dir: Path) -> list[tuple[int, float]]:
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars("train/lr")]


def test_a_cosine_schedule_logs_a_falling_learning_rate(tmp_path: Path):
    train_in_process(
        ["experiment=thermometer", "scheduler=cosine", "trainer.max_epochs=1000"], tmp_path
    )
    curve = lr_curve(tmp_path)
    values = [v for _, v in curve]
    assert values[0] == pytest.approx(1e-2, rel=0.01) and values[-1] < 1e-4
    assert all(a >= b for a, b in zip(values, values[1:]))  # never rises
    assert len(curve) < 100  # logged every log_every_n_steps, not every epoch


@pytest.mark.parametrize("scheduler", ["step", "onecycle", "plateau"])
def test_every_schedule_trains_and_logs_its_rate(scheduler: str, tmp_path: Path):
    # plateau: with a threshold of 100%, no validation counts as an improvement
    extra = {
        "step": ["scheduler.step_size=100"],
        "onecycle": ["scheduler.cycle_momentum=false"],
        "plateau": [
            "scheduler.patience=0",
            "scheduler.threshold=1.0",
            "trainer.check_val_every_n_epoch=10",
        ],
    }[scheduler]
    result = train_in_process(
        ["experiment=thermometer", f"scheduler={scheduler}", "trainer.max_epochs=400", *extra],
        tmp_path,
    )
    values = [v for _, v in lr_curve(tmp_path)]
    assert result["status"] == "finished" and result["hparams"]["scheduler"] == scheduler
    if scheduler == "step":
        assert values[0] == pytest.approx(1e-2) and values[-1] == pytest.approx(1e-2 * 0.5**3)
    elif scheduler == "onecycle":
        assert (
            max(values) == pytest.approx(1e-2, rel=0.05)
            and values[0] < max(values) / 2
            and values[-1] < max(values) / 100
        )
    else:
        assert values[-1] < values[0] / 100  # reduced at each validation that did not improve


def test_gradient_accumulation_steps_once_per_two_batches(tmp_path: Path):
    plain = train_in_process(["trainer.max_epochs=2"], tmp_path / "plain")
    accumulated = train_in_process(
        ["trainer.max_epochs=2", "trainer.accumulate_grad_batches=2"], tmp_path / "accumulated"
    )
    assert plain["steps"] == 2 * 8 and accumulated["steps"] == 2 * 4
    assert accumulated["parameters"] != plain["parameters"]


def test_the_best_value_follows_the_metrics_own_direction():
    directions = MLPClassifier().metric_directions()
    assert directions["val/acc"] and directions["val/f1"] and not directions["val/loss"]
    state = RunState(RunInfo(Path(".")), {}, "val/f1", "max")
    history = MetricHistory(state, directions)
    for epoch, (f1, loss) in enumerate([(0.5, 2.0), (0.8, 1.0), (0.6, 1.5)]):
        history.log_metrics({"val/f1": f1, "val/loss": loss, "epoch": epoch})
    assert state.metrics["val/f1"].best == 0.8 and state.metrics["val/loss"].best == 1.0
    assert state.metrics["val/f1"].best_epoch == state.metrics["val/loss"].best_epoch == 2


def test_monitor_mode_auto_takes_the_metrics_direction(tmp_path: Path, mnist_root: Path):
    result = train_in_process(
        [
            "experiment=mnist",
            f"data.root={mnist_root}",
            "data.val_size=40",
            "trainer.max_epochs=2",
            "monitor=val/f1",
        ],
        tmp_path,
    )
    assert result["monitor"]["mode"] == "max"
    assert result["monitor"]["best"] == max(
        result["metrics"]["val/f1"]["best"], result["metrics"]["val/f1"]["final"]
    )
    cfg = compose_train(["experiment=mnist"], tmp_path)
    assert cfg.monitor_mode == "auto"


@pytest.mark.slow  # builds and installs the wheel
def test_the_wheel_carries_its_configs_and_trains_from_anywhere(tmp_path: Path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("lightning_hydra_experiments-*.whl"))
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert (site / "experiments" / "conf" / "train.yaml").is_file() and not (
        site / "experiments" / "conf"
    ).is_symlink()
    plugins = [
        "experiments_plugins/grid_sweeper.py",
        "experiments_plugins/optuna_sweeper.py",
        "experiments_plugins/vectorized_launcher.py",
    ]
    assert all((site / "hydra_plugins" / p).is_file() for p in plugins)
    # nothing at another distribution's package path (the official Optuna plugin's)
    assert sorted(p.name for p in (site / "hydra_plugins").iterdir()) == ["experiments_plugins"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "CI": "true"}
    where = subprocess.run(
        [sys.executable, "-c", "import experiments.core.config as c; print(c.CONF_DIR)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip() == str(site / "experiments" / "conf")
    shown = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--cfg", "job", "experiment=thermometer"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0 and "fit_all_readings: true" in shown.stdout
    done = subprocess.run(
        [sys.executable, "-m", "experiments.train", "trainer.max_epochs=2"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_metrics(only_run_dir(elsewhere))["status"] == "finished"


def test_the_readme_extension_example_runs_as_written(tmp_path: Path):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Extending") : readme.index("## Speed")]
    for block in re.findall(r"```(?:python|yaml)\n(.*?)```", section, re.S):
        path = tmp_path / block.splitlines()[0].removeprefix("# ").strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block)
    command = next(line for line in section.splitlines() if line.startswith("PYTHONPATH="))
    variable, _, rest = command.partition(" ")
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path / variable.partition("=")[2]),
        "CI": "true",
        "XDG_CACHE_HOME": str(tmp_path / ".cache"),
    }
    done = subprocess.run(
        rest.split() + ["trainer.max_epochs=300"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = only_run_dir(tmp_path)
    record = read_metrics(run_dir)
    assert (
        record["monitor"] == {**record["monitor"], "name": "val/mae", "mode": "min"}
        and record["monitor"]["best"] < 1e-3
    )
    coefficients = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)[
        "state_dict"
    ]["coefficients"]
    assert coefficients.tolist() == pytest.approx([2.0, -1.0, 0.5], abs=1e-3)
