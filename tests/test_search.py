"""Finding a good learning rate: Bayesian search on current Optuna (hydra/sweeper=optuna), Lightning's
learning-rate range test (experiments.lr_find) and tutorial 002's gradient check (experiments.gradcheck)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
from omegaconf import OmegaConf

from conftest import cli, compose_train, fake_mnist, only_run_dir, read_metrics
from experiments.core.search import study_storage
from experiments.gradcheck import check_gradient
from experiments.lr_find import steepest_descent

SHORT = [
    "experiment=thermometer_adam",
    "trainer.max_epochs=300",
    "trainer.check_val_every_n_epoch=100",
]
LR = "optimizer.lr=tag(log,interval(1e-4,1))"  # a sweep override, as for the official plugin


def trials(sweep: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="experiments", storage=study_storage(None, sweep)).trials


def jobs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.startswith("trial"))


@pytest.mark.slow  # eight trials and Optuna's plots
def test_an_optuna_search_runs_its_trials_reports_the_best_and_continues_when_run_again(
    tmp_path: Path,
):
    args = [
        *SHORT,
        "hydra/sweeper=optuna",
        LR,
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    done = cli(["-m", *args], tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = tmp_path / "sweep"
    first = trials(sweep)
    assert [t.number for t in first] == [0, 1, 2, 3] and all(
        t.state.name == "COMPLETE" for t in first
    )
    assert [p.name[:8] for p in jobs(sweep)] == ["trial000", "trial001", "trial002", "trial003"]
    for trial in first:  # each trial's value is its job's best val/loss
        job = next(p for p in jobs(sweep) if p.name.startswith(f"trial{trial.number:03d}"))
        assert (
            trial.value == read_metrics(job)["monitor"]["best"]
            and read_metrics(job)["hparams"]["optimizer.lr"] == trial.params["optimizer.lr"]
        )
        assert 1e-4 <= trial.params["optimizer.lr"] <= 1
    best = min(first, key=lambda t: t.value)
    assert f"Best of 4 trials: trial {best.number}" in done.stdout
    assert (
        f"python -m experiments.train experiment=thermometer_adam trainer.max_epochs=300 trainer.check_val_every_n_epoch=100 optimizer.lr={best.params['optimizer.lr']!r}"
        in done.stdout
    )
    assert "4 jobs: 4 finished" in done.stdout and (sweep / "summary.csv").is_file()
    assert (sweep / "optuna_history.png").is_file() and (sweep / "optuna_importances.png").is_file()
    # as the official plugin writes it
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results == {"name": "optuna", "best_params": best.params, "best_value": best.value}
    again = cli(["-m", *args], tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [t.number for t in trials(sweep)] == list(range(8)) and len(jobs(sweep)) == 8
    # the continued study draws new values
    assert len({t.params["optimizer.lr"] for t in trials(sweep)}) == 8
    assert "Best of 8 trials" in again.stdout


def test_the_preset_searches_in_populations_and_its_best_command_trains_alone(tmp_path: Path):
    args = [
        *SHORT,
        "sweep=optuna_lr",
        "hydra/launcher=vectorized",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=4",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    done = cli(args, tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [read_metrics(job) for job in jobs(tmp_path / "sweep")]
    # one batch of 4 trials, one population
    assert len(records) == 4 and all(r["population"]["size"] == 4 for r in records)
    best = min(trials(tmp_path / "sweep"), key=lambda t: t.value)
    line = next(text for text in done.stdout.splitlines() if "train it again with:" in text)
    assert (
        line.split("with: ")[1]
        == f"python -m experiments.train {' '.join(SHORT)} optimizer.lr={best.params['optimizer.lr']!r}"
    )  # no sweep=


def test_a_search_written_for_the_template_and_the_official_plugin_runs(tmp_path: Path):
    """lightning-hydra-template's mnist_optuna.yaml, its keys named as this package names them:
    the official plugin's class path, sampler group and max_failure_rate, the template's
    optimized_metric and direction; the best trial's command trains it alone."""
    search = tmp_path / "configs" / "hparams_search"
    search.mkdir(parents=True)
    (search / "mnist_optuna.yaml").write_text(
        textwrap.dedent("""\
        # @package _global_
        defaults:
          - override /hydra/sweeper: optuna
          - override /hydra/sweeper/sampler: tpe
        optimized_metric: "val/acc_best"
        hydra:
          mode: "MULTIRUN"
          sweeper:
            _target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper
            storage: null
            study_name: null
            n_jobs: 1
            direction: maximize
            n_trials: 3
            max_failure_rate: 0.0
            sampler:
              _target_: optuna.samplers.TPESampler
              seed: 1234
              n_startup_trials: 2
            params:
              optimizer.lr: interval(0.0001, 0.1)
              data.batch_size: choice(32, 64)
              model.hidden: choice([16], [32])
        """)
    )
    root = fake_mnist(tmp_path / "digits")
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'configs'}]"
    args = [
        searchpath,
        "+hparams_search=mnist_optuna",
        "experiment=mnist",
        f"data.root={root}",
        "data.val_size=40",
        "trainer.max_epochs=1",
    ]
    done = cli(
        [*args, "hydra/launcher=vectorized", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hydra.sweeper.n_jobs=1 hands the launcher one trial at a time" in done.stdout
    study = trials(tmp_path / "sweep")
    assert len(study) == 3 and {t.params["data.batch_size"] for t in study} <= {32, 64}
    for trial in study:  # the objective is each trial's best val/acc, maximised
        record = read_metrics(
            next(
                p for p in jobs(tmp_path / "sweep") if p.name.startswith(f"trial{trial.number:03d}")
            )
        )
        assert (
            trial.value == record["metrics"]["val/acc"]["best"]
            and record["monitor"]["name"] == "val/acc"
        )
    best = max(study, key=lambda t: t.value)
    assert f"Best of 3 trials: trial {best.number}, maximized to {best.value:.6g}" in done.stdout
    command = next(
        text for text in done.stdout.splitlines() if "train it again with:" in text
    ).split("with: ")[1]
    words = shlex.split(command)
    assert (
        words[:3] == ["python", "-m", "experiments.train"]
        and words[-1] == "hydra.mode=RUN"
        and searchpath in words
    )
    again = cli(words[3:], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    run = only_run_dir(tmp_path)
    assert read_metrics(run)["metrics"]["val/acc"]["best"] == best.value  # the trial, trained alone


def test_a_pruner_never_prunes_a_trial_at_its_last_validation_and_says_when_it_cannot_act(
    tmp_path: Path,
):
    args = [
        "-m",
        "experiment=thermometer",
        "trainer.max_epochs=300",
        "trainer.check_val_every_n_epoch=500",
        "hydra/sweeper=optuna",
        "optimizer.lr=choice(0.0001,0.01)",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.sampler={_target_:optuna.samplers.BruteForceSampler}",
        "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,upper:20.0}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    done = cli(args, tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "these runs validate every 500 epochs of 300, so no trial will be pruned" in done.stdout
    assert sorted(t.state.name for t in trials(tmp_path / "sweep")) == ["COMPLETE", "COMPLETE"]
    slow = next(read_metrics(p) for p in jobs(tmp_path / "sweep") if "0.0001" in p.name)
    assert (
        slow["status"] == "finished"
        and slow["monitor"]["best"] > 20
        and set(slow["test"]) == {"test/loss"}
    )


def test_max_failure_rate_stops_the_search_as_the_official_plugin_does(tmp_path: Path):
    args = [
        "-m",
        "experiment=thermometer",
        "trainer.max_epochs=50",
        "hydra/sweeper=optuna",
        "optimizer.lr=choice(0.5)",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.max_failure_rate=0",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    done = cli(args, tmp_path)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith(
        "error: 1 of the 1 trials of the last batch failed or diverged"
    )
    # the search stopped after its first batch
    assert [t.state.name for t in trials(tmp_path / "sweep")] == ["FAIL"]


@pytest.mark.parametrize("launcher", ["basic", "vectorized"])
def test_a_diverged_trial_is_failed_and_a_pruned_one_is_pruned_while_the_study_goes_on(
    tmp_path: Path, launcher: str
):
    args = [
        "-m",
        f"hydra/launcher={launcher}",
        "hydra.sweeper.n_jobs=3" if launcher == "vectorized" else "hydra.sweeper.n_jobs=1",
        "experiment=thermometer",
        "trainer.max_epochs=300",
        "trainer.check_val_every_n_epoch=100",
        "hydra/sweeper=optuna",
        "optimizer.lr=choice(0.5,0.0001,0.01)",
        "hydra.sweeper.n_trials=5",
        "hydra.sweeper.sampler={_target_:optuna.samplers.BruteForceSampler}",  # each value once, then the study stops
        "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,upper:40.0}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    done = cli(args, tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    by_lr = {t.params["optimizer.lr"]: t for t in trials(tmp_path / "sweep")}
    # the sampler's space is used up at 3
    assert sorted(by_lr) == [0.0001, 0.01, 0.5] and len(jobs(tmp_path / "sweep")) == 3
    assert by_lr[0.5].state.name == "FAIL"  # diverges: SGD at 0.5 on the scaled readings
    assert by_lr[0.0001].state.name == "PRUNED"  # its val/loss after 100 epochs is 44.7, above 40
    assert by_lr[0.0001].intermediate_values == {100: pytest.approx(44.7168, rel=1e-4)}
    assert by_lr[0.01].state.name == "COMPLETE" and by_lr[0.01].value == pytest.approx(
        12.6315, rel=1e-4
    )
    records = {job.name: read_metrics(job) for job in jobs(tmp_path / "sweep")}
    assert sorted(r["status"] for r in records.values()) == ["diverged", "finished", "pruned"]
    pruned = next(r for r in records.values() if r["status"] == "pruned")
    assert (
        pruned["reason"] == "pruned by ThresholdPruner at epoch 100, val/loss 44.7168"
        and pruned["epochs"] == 100
    )
    assert (
        torch.load(Path(pruned["run_dir"], "checkpoints", "last.ckpt"), weights_only=True)["epoch"]
        == 99
    )  # that validation's checkpoint
    assert "3 jobs: 1 finished, 1 pruned, 1 diverged" in done.stdout
    # vectorized: one population, pruned and diverged runs stop alone
    populations = [r["population"] for r in records.values()]
    assert populations == (
        [{"size": 3, "jobs": sorted(records)}] * 3 if launcher == "vectorized" else [None] * 3
    )


def test_a_continued_study_keeps_its_choices(tmp_path: Path):
    args = [
        "-m",
        "experiment=thermometer",
        "trainer.max_epochs=50",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    assert cli([*args, "optimizer=choice(sgd,adam)"], tmp_path).returncode == 0
    kept = {
        name: (tmp_path / "sweep" / name).read_bytes()
        for name in ("optuna.journal", "multirun.yaml")
    }
    done = cli([*args, "optimizer=choice(sgd)"], tmp_path)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith(
        "error: optimizer chooses from other values than the study"
    )
    assert "optimizer=choice(sgd,adam)" in done.stderr and kept == {
        name: (tmp_path / "sweep" / name).read_bytes() for name in kept
    }


def test_the_range_test_takes_its_steps_whatever_the_epochs(tmp_path: Path):
    done = cli(
        [
            "experiment=thermometer",
            "trainer.max_epochs=30",
            "lr_find.max_lr=0.01",
            "lr_find.num_training=50",
        ],
        tmp_path,
        module="experiments.lr_find",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(next((tmp_path / "outputs" / "lr_find").glob("*/lr_find.json")).read_text())
    assert len(result["lr"]) == 50 and result["lr"][-1] == pytest.approx(0.01, rel=0.2)


def test_the_learning_rate_range_test_writes_its_curve_and_prints_the_command(tmp_path: Path):
    root = fake_mnist(tmp_path / "digits")
    done = cli(
        [
            "experiment=mnist",
            f"data.root={root}",
            "data.val_size=40",
            "data.batch_size=16",
            "lr_find.num_training=40",
        ],
        tmp_path,
        module="experiments.lr_find",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = next((tmp_path / "outputs" / "lr_find").iterdir())
    result = json.loads((run / "lr_find.json").read_text())
    assert len(result["lr"]) == len(result["loss"]) >= 10 and result["lr"] == sorted(result["lr"])
    assert result["lr"][0] >= 1e-6 and result["suggestion"] in result["lr"]
    assert (run / "lr_find.png").is_file() and list(run.glob("events.out.tfevents.*"))
    match = re.search(r"train with it: (python -m experiments.train .*)", done.stdout)
    assert (
        match
        and f"optimizer.lr={result['suggestion']:.3g}" in match[1]
        and "experiment=mnist" in match[1]
    )


def test_the_suggestion_is_where_the_loss_falls_fastest_per_factor_of_learning_rate():
    import math

    lrs = [10 ** (-6 + 6 * i / 99) for i in range(100)]
    # falls fastest at lr = 10**-2.5, is lowest near 0.1, then blows up
    losses = [
        2 - math.tanh(2 * (math.log10(lr) + 2.5)) + (50 * (lr - 0.1) if lr > 0.1 else 0)
        for lr in lrs
    ]
    suggestion = steepest_descent(lrs, losses)
    assert math.log10(suggestion) == pytest.approx(-2.5, abs=0.07)  # within one step of the range
    rising = [1 + lr for lr in lrs]
    assert steepest_descent(lrs, rising) is None
    assert steepest_descent(lrs[:5], losses[:5]) is None  # too few steps past skip_begin
    with_nan = losses[:60] + [math.nan] + losses[61:]
    assert steepest_descent(lrs, with_nan) == suggestion


def test_the_line_gradient_matches_the_seeds_hand_derived_one_and_finite_differences(
    tmp_path: Path,
):
    from experiments.build import build

    cfg = compose_train(["experiment=thermometer"], tmp_path)
    datamodule, model = build(cfg)
    datamodule.setup()
    result = check_gradient(model, next(iter(datamodule.train_dataloader())))
    rows = {r["coordinate"]: r for r in result["rows"]}
    assert set(rows) == {"linear.weight[0, 0]", "linear.bias[0]"}
    # the tutorial's first gradient
    assert rows["linear.weight[0, 0]"]["autograd"] == pytest.approx(-77.6140, rel=1e-4)
    assert all(r["analytic"] == pytest.approx(r["autograd"], rel=1e-12) for r in rows.values())
    assert result["largest_relative_difference"] < 1e-6


def test_the_mlp_gradient_matches_finite_differences_on_sampled_coordinates(tmp_path: Path):
    from experiments.build import build

    root = fake_mnist(tmp_path / "digits")
    cfg = compose_train(["experiment=mnist", f"data.root={root}", "data.val_size=40"], tmp_path)
    datamodule, model = build(cfg)
    datamodule.setup()
    result = check_gradient(model, next(iter(datamodule.train_dataloader())), coordinates=40)
    assert len(result["rows"]) == 40 and result["parameters"] == 784 * 28 + 28 + 28 * 10 + 10
    assert result["largest_relative_difference"] < 1e-4


BROKEN_MODEL = textwrap.dedent("""\
    import torch
    from experiments.models.linear import LinearRegression

    class Twice(torch.autograd.Function):
        \"\"\"y = x, whose backward claims dy/dx = 2.\"\"\"

        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return 2 * grad

    class BrokenLine(LinearRegression):
        def forward(self, x):
            return Twice.apply(super().forward(x))
    """)


def test_a_broken_gradient_is_caught(tmp_path: Path):
    namespace: dict = {}
    exec(BROKEN_MODEL, namespace)
    model = namespace["BrokenLine"](init_weight=1.0, init_bias=0.0)
    x = torch.linspace(1, 5, 11).unsqueeze(1)
    result = check_gradient(model, (x, 3 * x + 1))
    assert result["largest_relative_difference"] > 0.4  # autograd says twice what the loss does


def test_gradcheck_exits_non_zero_on_a_broken_gradient_and_zero_on_the_packages_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "broken.py").write_text(BROKEN_MODEL)
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "broken.yaml").write_text(
        "_target_: broken.BrokenLine\ninit_weight: 1.0\ninit_bias: 0.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # PYTHONPATH=tmp_path, in this process
    done = cli(
        [
            f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
            "experiment=thermometer",
            "model=broken",
        ],
        tmp_path,
        module="experiments.gradcheck",
    )
    sys.modules.pop("broken", None)  # the process given back as it was
    assert done.returncode == 1 and "beyond gradcheck.tolerance=0.0001" in done.stderr
    assert "linear.weight[0, 0]" in done.stdout  # the table is shown before the verdict
    done = cli(["experiment=thermometer"], tmp_path, module="experiments.gradcheck")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "by hand" in done.stdout and "largest relative difference" in done.stdout
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow  # three worker processes
def test_three_workers_share_one_search_with_distinct_trials_and_report_the_studys_best_once(
    tmp_path: Path,
):
    """hydra.sweeper.shared=true, the same command started three times (as three Slurm jobs
    would): one sweep directory and one study (its journal survives a worker's death), each worker
    asks for its own trials, none draws another's values although the sampler is seeded alike, and
    the last worker to end reports the study's best, once."""
    from optuna.storages.journal import JournalFileBackend

    search = tmp_path / "search"
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.shared=true",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        "experiment=thermometer",
        "trainer.max_epochs=30",
        "optimizer.lr=tag(log,interval(1e-4,1e-2))",
        f"hydra.sweep.dir={search}",
    ]
    env = {**os.environ, "CI": "true"}
    workers = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    said = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0, 0], said
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(search / "optuna.journal")))
    study = optuna.load_study(study_name="experiments", storage=storage)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.params["optimizer.lr"] for t in trials}) == 6  # no worker repeated another's draw
    assert len({t.user_attrs["experiments_worker"] for t in trials}) == 3
    assert len(list(search.glob("trial*/metrics.json"))) == 6
    reports = [s for s in said if "Best of 6 trials" in s]
    assert len(reports) == 1 and f"trial {study.best_trial.number}," in reports[0]
    assert sum("the last worker of the search to end writes its report" in s for s in said) == 2
    assert len((search / "runs.csv").read_text().splitlines()) == 7  # a header and six trials


def test_a_shared_search_fails_only_the_running_trials_of_dead_workers_on_its_host(tmp_path: Path):
    """A worker starting later tells a dead worker's running trial as failed; a live worker's, or
    one on another host (which it cannot look up), it leaves to that worker."""
    import datetime
    import socket
    from types import SimpleNamespace

    from hydra_plugins.experiments_plugins.optuna_search import WORKER, abandoned, worker_alive

    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    )
    dead = int(ended.stdout)
    host = socket.gethostname()
    assert worker_alive(f"{host}:{os.getpid()}")
    assert not worker_alive(f"{host}:{dead}")
    assert worker_alive("another-node:1")
    assert not worker_alive(None)
    # a trial no worker claimed: one asked for a moment ago (its worker claims it next) is left
    # alone, one asked for minutes ago was a dead worker's
    now = datetime.datetime.now()
    for started, gone in ((now, False), (now - datetime.timedelta(minutes=5), True)):
        trial = SimpleNamespace(user_attrs={}, datetime_start=started)
        assert abandoned(trial) is gone
    assert not abandoned(SimpleNamespace(user_attrs={WORKER: f"{host}:{os.getpid()}"}))
    assert abandoned(SimpleNamespace(user_attrs={WORKER: f"{host}:{dead}"}))
