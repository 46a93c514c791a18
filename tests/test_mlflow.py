"""logger=mlflow: each run, alone or a population's job, an MLflow run in a local SQLite store whose
params, metrics, tags and status the MLflow client reads back equal to the run's metrics.json."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import cli, job_dirs, read_metrics, scalar_history, train_in_process

SHORT = ["experiment=thermometer", "trainer.max_epochs=300", "trainer.check_val_every_n_epoch=50"]


def mlflow_runs(store: Path) -> dict:
    """The runs of a store, by name, as MLflow's own client reads them."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            history = {
                key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                for key in run.data.metrics
            }
            runs[run.info.run_name] = (experiment.name, run, history)
    return runs


def check_run(run_dir: Path, found: tuple) -> None:
    """An MLflow run says what the run's metrics.json and TensorBoard event files say."""
    experiment, run, history = found
    record = read_metrics(run_dir)
    hparams = record["hparams"]
    assert experiment == record["experiment"]
    assert run.info.status == {"finished": "FINISHED", "diverged": "FAILED"}[record["status"]]
    # every HParams key, as MLflow stores params: text (None and lists as Lightning writes them)
    assert {k: run.data.params[k] for k in hparams} == {
        k: "" if v == "" else str(v) for k, v in hparams.items()
    }
    tags = run.data.tags
    assert (tags["optimizer"], tags["lr"], tags["seed"], tags["status"]) == (
        hparams["optimizer"],
        str(hparams["optimizer.lr"]),
        str(hparams["seed"]),
        record["status"],
    )
    configuration = ",".join(
        sorted(o for o in record["overrides"] if not o.startswith(("seed=", "logger=")))
    )
    if record["population"] is not None:  # a sweep's job: as its folder, without the seed
        configuration = run_dir.name
    assert tags["configuration"] == configuration
    metrics = run.data.metrics
    if record["status"] == "finished":
        assert metrics["best/val_loss"] == pytest.approx(record["monitor"]["best"], rel=1e-6)
        for tag, value in record["test"].items():
            assert metrics[tag] == pytest.approx(value, rel=1e-6)
    # every scalar at every step TensorBoard holds (float32 there, float64 here)
    events = scalar_history(run_dir)
    assert "train/loss" in events and set(events) <= set(history)
    for tag, points in events.items():
        assert [s for s, _ in history[tag]] == [s for s, _ in points], tag
        assert [v for _, v in history[tag]] == pytest.approx([v for _, v in points], rel=1e-6)
    if record["status"] == "finished":
        for tag in ("train/loss", "val/loss"):
            assert history[tag][-1][1] == pytest.approx(record["metrics"][tag]["final"], rel=1e-6)
    else:
        assert history[f"status/{record['status']}"] == [(record["epochs"], 1.0)]


def test_a_single_run_is_an_mlflow_run_in_a_store_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    train_in_process([*SHORT, "logger=[tensorboard,mlflow]"], run_dir)
    runs = mlflow_runs(run_dir)
    assert list(runs) == ["run"]
    check_run(run_dir, runs["run"])


def test_a_populations_jobs_are_mlflow_runs_in_the_sweeps_store(tmp_path: Path):
    """hydra/launcher=vectorized trains the jobs together; each is its own MLflow run, named as its
    folder, the diverged one FAILED, with the numbers a single run would log."""
    done = cli(
        [
            "-m",
            "hydra/launcher=vectorized",
            *SHORT,
            "logger=[tensorboard,mlflow]",
            "optimizer=sgd,adam",
            "optimizer.lr=0.01,0.1",
            "data.input_scale=null",  # raw readings: SGD at 0.1 diverges
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sweep = tmp_path / "sweep"
    runs = mlflow_runs(sweep)
    jobs = job_dirs(sweep)
    assert sorted(runs) == sorted(job.name for job in jobs) and len(jobs) == 4
    assert {read_metrics(job)["status"] for job in jobs} == {"finished", "diverged"}
    assert all(read_metrics(job)["population"] is not None for job in jobs)
    for job in jobs:
        check_run(job, runs[job.name])
    assert f"mlflow ui --backend-store-uri sqlite:///{sweep / 'mlflow.db'}" in done.stdout


def test_without_mlflow_installed_the_mistake_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    done = cli([*SHORT, "logger=mlflow"], tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        'error: logger=mlflow needs MLflow, which is not installed: pip install ".[mlflow]" (or pip install mlflow) in this environment, or use logger=tensorboard.'
    ]
    assert not (tmp_path / "outputs").exists()
    # a sweep: refused before its directory, not a failed job each
    done = cli(["-m", *SHORT, "logger=mlflow", "optimizer.lr=0.01,0.02"], tmp_path)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        'error: logger=mlflow needs MLflow, which is not installed: pip install ".[mlflow]" (or pip install mlflow) in this environment, or use logger=tensorboard.'
    ]
    assert not (tmp_path / "outputs").exists()
