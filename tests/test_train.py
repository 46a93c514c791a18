"""Training in-process through train(cfg): what a run fits, records and leaves on disk."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import read_metrics, train_in_process


def test_default_experiment_fits_seed_000s_line(tmp_path: Path):
    result = train_in_process([], tmp_path)
    assert result["status"] == "finished"
    assert result["parameters"]["weight"] == pytest.approx(3.0, abs=0.01)
    assert result["parameters"]["bias"] == pytest.approx(0.8, abs=0.01)
    # 400 training points in batches of 50
    assert result["epochs"] == 50 and result["steps"] == 50 * 8


def test_metrics_json_holds_final_best_test_status_and_time(tmp_path: Path):
    train_in_process(
        ["experiment=thermometer", "trainer.max_epochs=300", "trainer.check_val_every_n_epoch=100"],
        tmp_path,
    )
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "finished" and metrics["reason"] is None
    assert metrics["wall_time_s"] > 0
    assert set(metrics["metrics"]) == {"train/loss", "val/loss"}
    val = metrics["metrics"]["val/loss"]
    assert val["final_epoch"] == 300 and val["best"] <= val["final"]
    assert metrics["monitor"] == {
        "name": "val/loss",
        "mode": "min",
        "best": val["best"],
        "epoch": val["best_epoch"],
    }
    assert set(metrics["test"]) == {"test/loss"}
    assert set(metrics["parameters"]) == {"weight", "bias"}
    assert (
        Path(metrics["checkpoints"]["best"]).is_file()
        and Path(metrics["checkpoints"]["last"]).is_file()
    )


def test_every_checkpoint_loads_with_weights_only(tmp_path: Path, mnist_root: Path):
    train_in_process(
        ["experiment=mnist", f"data.root={mnist_root}", "data.val_size=40", "trainer.max_epochs=1"],
        tmp_path,
    )
    checkpoints = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in checkpoints] == ["best.ckpt", "last.ckpt"]
    for path in checkpoints:
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["hyper_parameters"] == {
            "input_shape": [1, 28, 28],
            "num_outputs": 10,
            "hidden": [28],
        }
        assert checkpoint["run_config"]["optimizer"]["_target_"] == "torch.optim.Adam"


def test_classifier_learns_the_small_idx_set_and_reports_accuracy(tmp_path: Path, mnist_root: Path):
    result = train_in_process(
        [
            "experiment=mnist",
            f"data.root={mnist_root}",
            "data.val_size=40",
            "data.batch_size=32",
            "trainer.max_epochs=5",
        ],
        tmp_path,
    )
    assert result["monitor"]["name"] == "val/acc"
    assert set(result["test"]) == {"test/loss", "test/acc", "test/f1"}
    assert result["test"]["test/acc"] > 0.8  # each class is a bright bar at its own rows


def test_full_batch_gradient_descent_takes_one_step_per_epoch(tmp_path: Path):
    result = train_in_process(["data.batch_size=null", "trainer.max_epochs=7"], tmp_path)
    assert result["steps"] == 7


def test_seed_zero_is_applied_and_reproducible(tmp_path: Path):
    first = train_in_process(["seed=0", "trainer.max_epochs=2"], tmp_path / "a")
    second = train_in_process(["seed=0", "trainer.max_epochs=2"], tmp_path / "b")
    other = train_in_process(["seed=1", "trainer.max_epochs=2"], tmp_path / "c")
    assert first["parameters"] == second["parameters"]
    assert first["parameters"] != other["parameters"]


def test_sgd_on_raw_thermometer_readings_diverges_and_is_reported(tmp_path: Path):
    """Tutorial 002: lr 1e-2 on unscaled t_u blows up; the run stops and says so."""
    result = train_in_process(["experiment=thermometer", "data.input_scale=null"], tmp_path)
    assert result["status"] == "diverged"
    assert "train loss became" in result["reason"]
    assert result["epochs"] < 5000
    assert read_metrics(tmp_path)["status"] == "diverged"


def test_resume_from_a_checkpoint_continues_to_max_epochs(tmp_path: Path):
    train_in_process(
        ["experiment=thermometer", "trainer.max_epochs=200", "trainer.check_val_every_n_epoch=100"],
        tmp_path / "first",
    )
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = train_in_process(
        [
            "experiment=thermometer",
            "trainer.max_epochs=400",
            "trainer.check_val_every_n_epoch=100",
            f"ckpt_path={last}",
        ],
        tmp_path / "second",
    )
    straight = train_in_process(
        ["experiment=thermometer", "trainer.max_epochs=400", "trainer.check_val_every_n_epoch=100"],
        tmp_path / "third",
    )
    assert resumed["epochs"] == 400 and resumed["steps"] == 400
    assert resumed["parameters"]["weight"] == pytest.approx(
        straight["parameters"]["weight"], abs=1e-5
    )


def test_csv_logger_writes_the_metrics(tmp_path: Path):
    train_in_process(["logger=csv", "trainer.max_epochs=3"], tmp_path)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert {"train/loss", "val/loss", "test/loss"} <= set(rows[0])
    assert not list(tmp_path.glob("events.out.tfevents.*"))


def test_no_logger_and_no_callbacks_still_record_the_run(tmp_path: Path):
    result = train_in_process(["logger=none", "callbacks=none", "trainer.max_epochs=3"], tmp_path)
    assert result["status"] == "finished" and result["test"]["test/loss"] >= 0
    assert not (tmp_path / "checkpoints").exists()
    assert not (tmp_path / "lightning_logs").exists()
    assert read_metrics(tmp_path)["metrics"]["val/loss"]["final_epoch"] == 3


def test_gradient_clipping_from_the_trainer_config_limits_each_step(tmp_path: Path):
    """trainer.gradient_clip_val works as Lightning users expect, with the models' own optimizer step."""
    clipped = train_in_process(
        [
            "experiment=thermometer",
            "data.input_scale=null",
            "trainer.max_epochs=3",
            "trainer.gradient_clip_val=0.5",
            "trainer.gradient_clip_algorithm=value",
            "optimizer.lr=0.1",
        ],
        tmp_path / "clipped",
    )
    # each step moves w and b by at most lr * 0.5 = 0.05 from the tutorial's start w = 1, b = 0
    assert abs(clipped["parameters"]["weight"] - 1.0) <= 3 * 0.05 + 1e-6
    assert abs(clipped["parameters"]["bias"]) <= 3 * 0.05 + 1e-6
    free = train_in_process(
        [
            "experiment=thermometer",
            "data.input_scale=null",
            "trainer.max_epochs=3",
            "optimizer.lr=0.1",
        ],
        tmp_path / "free",
    )
    # without clipping the raw readings' gradient is huge
    assert abs(free["parameters"]["weight"] - 1.0) > 10
