"""hydra/launcher=vectorized: a sweep's compatible jobs trained as one population give every job
what it would have had alone, leave every job the directory it would have left, isolate a
diverging job, survive interruption, and refuse what they cannot do in one sentence."""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from conftest import (
    cli,
    compose_train,
    fake_mnist,
    job_dirs,
    population,
    read_metrics,
    scalar_history,
    terminate_at_epoch,
    train_in_process,
)
from experiments import api
from experiments.core.config import UserError
from experiments.evaluate import evaluate
from experiments.population.group import group_key

SHORT = [
    "experiment=thermometer",
    "trainer.max_epochs=400",
    "trainer.check_val_every_n_epoch=100",
    "trainer.deterministic=true",
]
OPTIMIZERS = [
    [f"optimizer={name}", f"optimizer.lr={lr}"]
    for name in ("sgd", "momentum", "adagrad", "rmsprop", "adam")
    for lr in (1e-3, 1e-2, 1e-1)
]
SAME = (
    "status",
    "reason",
    "epochs",
    "steps",
    "parameters",
    "best_parameters",
    "metrics",
    "test",
    "monitor",
)


@pytest.fixture(scope="module")
def thermometer_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], list[dict]]:
    tmp = tmp_path_factory.mktemp("together")
    together = population([[*SHORT, *o] for o in OPTIMIZERS], tmp / "population")
    alone = [train_in_process([*SHORT, *o], tmp / f"alone{i}") for i, o in enumerate(OPTIMIZERS)]
    return together, alone


def test_every_job_of_a_population_ends_exactly_as_it_would_alone(thermometer_sweep):
    together, alone = thermometer_sweep
    assert [r["status"] for r in together].count("diverged") == 2 and [
        r["status"] for r in together
    ].count("finished") == 13
    for mine, single in zip(together, alone):
        assert {k: mine[k] for k in SAME} == {k: single[k] for k in SAME}, mine["overrides"]


def test_a_diverged_job_is_stopped_at_its_step_with_a_single_runs_reason(thermometer_sweep):
    together, alone = thermometer_sweep
    diverged = [(m, s) for m, s in zip(together, alone) if s["status"] == "diverged"]
    assert {m["hparams"]["optimizer"] for m, _ in diverged} == {"sgd", "momentum"}
    for mine, single in diverged:
        assert mine["reason"] == single["reason"] and re.fullmatch(
            r"train loss became (inf|nan) at epoch \d+, step \d+", mine["reason"]
        )
        assert mine["epochs"] == single["epochs"] < 400
        with pytest.raises(
            UserError, match=r"diverged before it wrote a checkpoint \(train loss became"
        ):
            evaluate(mine["run_dir"])


def test_no_other_job_moves_by_a_bit_when_one_diverges(thermometer_sweep, tmp_path: Path):
    together, _ = thermometer_sweep
    without = population(
        [
            [*SHORT, "optimizer=sgd", "optimizer.lr=0.001"],
            [*SHORT, "optimizer=adam", "optimizer.lr=0.01"],
        ],
        tmp_path,
    )
    with_one = {(r["hparams"]["optimizer"], r["hparams"]["optimizer.lr"]): r for r in together}
    for result in without:
        assert (
            result["parameters"]
            == with_one[result["hparams"]["optimizer"], result["hparams"]["optimizer.lr"]][
                "parameters"
            ]
        )


def test_a_jobs_own_mistake_fails_that_job_alone_and_the_others_train_as_they_would(
    thermometer_sweep, tmp_path: Path, capfd
):
    together, _ = thermometer_sweep
    results = population(
        [
            [*SHORT, "optimizer=adam", "optimizer.betas=[0.9]"],
            [*SHORT, "optimizer=sgd", "optimizer.lr=-1"],
            [*SHORT, "optimizer=adam", "optimizer.lr=0.01"],
        ],
        tmp_path,
    )
    assert [r["status"] for r in results] == ["failed", "failed", "finished"]
    assert results[0]["reason"].startswith("optimizer settings rejected by torch.optim.Adam")
    assert results[1]["reason"] == "optimizer.lr must be a positive number, got -1."
    assert read_metrics(tmp_path / "job1")["reason"] == results[1]["reason"]
    alone = next(
        r
        for r in together
        if r["hparams"]["optimizer"] == "adam" and r["hparams"]["optimizer.lr"] == 0.01
    )
    assert results[2]["parameters"] == alone["parameters"] and results[2]["population"]["size"] == 1
    assert capfd.readouterr().err.count("error: ") == 2


def test_an_mlp_population_ends_bit_for_bit_as_its_single_runs(tmp_path: Path):
    """RMSprop turns a rounding difference of 1e-8 in a gradient into 1e-3 in the weights: each
    replica runs its own forward, so there is none."""
    root = fake_mnist(tmp_path / "digits")
    base = [
        "experiment=mnist",
        f"data.root={root}",
        "data.val_size=40",
        "data.batch_size=32",
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
    ]
    jobs = [
        [*base, "optimizer=adam", "optimizer.lr=0.001"],
        [*base, "optimizer=sgd", "optimizer.lr=0.05"],
        [*base, "optimizer=rmsprop", "optimizer.lr=0.001", "scheduler=onecycle"],
    ]
    together = population(jobs, tmp_path / "population")
    for i, (mine, overrides) in enumerate(zip(together, jobs)):
        single = train_in_process(overrides, tmp_path / f"alone{i}")
        assert mine["status"] == single["status"] == "finished"
        assert {k: mine[k] for k in SAME} == {k: single[k] for k in SAME}
        weights = [
            torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
            for folder in (tmp_path / "population" / f"job{i}", tmp_path / f"alone{i}")
        ]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])


def test_scheduled_jobs_of_a_population_record_the_learning_rates_their_single_runs_record(
    tmp_path: Path,
):
    base = [
        "experiment=thermometer",
        "trainer.max_epochs=200",
        "trainer.check_val_every_n_epoch=20",
        "trainer.deterministic=true",
    ]
    schedules = [
        ["scheduler=step", "scheduler.step_size=20"],
        ["scheduler=cosine"],
        ["scheduler=onecycle", "scheduler.cycle_momentum=false"],
        ["scheduler=plateau", "scheduler.patience=1"],
        ["scheduler=none"],
    ]
    jobs = [[*base, *schedule] for schedule in schedules]
    together = population(jobs, tmp_path / "population")
    for i, (mine, overrides) in enumerate(zip(together, jobs)):
        single = train_in_process(overrides, tmp_path / f"alone{i}")
        # train/lr's history included
        assert {k: mine[k] for k in SAME} == {k: single[k] for k in SAME}, overrides
        assert scalar_history(tmp_path / "population" / f"job{i}") == scalar_history(
            tmp_path / f"alone{i}"
        )
    assert "train/lr" not in together[-1]["metrics"]  # no schedule, no learning-rate curve


def test_jobs_that_cannot_share_batches_are_grouped_apart(tmp_path: Path):
    def key(*overrides: str):
        return group_key(compose_train(list(overrides), tmp_path), None)[0]

    assert key("optimizer=sgd", "optimizer.lr=0.1") == key(
        "optimizer=adam", "optimizer.lr=0.01", "scheduler=cosine", "monitor=train/loss"
    )
    # initial values are per replica
    assert key("model.init_weight=1") == key("model.init_weight=2")
    assert (
        key("seed=1", "data.seed=0")
        == key("seed=2", "data.seed=0")
        != key("seed=1")
        != key("seed=2")
    )
    assert key("data.batch_size=10") != key("data.batch_size=20") and key(
        "trainer.max_epochs=5"
    ) != key("trainer.max_epochs=6")
    alone, reason = group_key(
        compose_train(
            [
                "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping",
                "+callbacks.stop.monitor=val/loss",
            ],
            tmp_path,
        ),
        None,
    )
    assert alone is None and "callbacks.stop" in reason
    assert group_key(compose_train(["trainer.precision=bf16-mixed"], tmp_path), None)[0] is None


@pytest.fixture(scope="module")
def vectorized_cli(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("cli")
    done = cli(
        [
            "hydra/launcher=vectorized",
            "sweep=optimizers",
            *SHORT[:3],
            f"hydra.sweep.dir={cwd / 'sweep'}",
        ],
        cwd,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd / "sweep", done


def test_the_cli_prints_the_grouping_and_the_usual_summary(vectorized_cli):
    sweep, done = vectorized_cli
    assert "15 jobs, 15 of them in 1 group(s) trained together" in done.stdout
    assert "differing in optimizer, optimizer.lr" in done.stdout
    assert "15 jobs: 13 finished, 2 diverged" in done.stdout
    rows = list(csv.DictReader((sweep / "runs.csv").open()))
    assert len(rows) == 15 and [r["status"] for r in rows[-2:]] == ["diverged", "diverged"]
    assert (sweep / "summary.png").is_file() and (sweep / "paths.png").is_file()


def test_every_job_leaves_a_complete_run_directory(vectorized_cli):
    sweep, _ = vectorized_cli
    jobs = job_dirs(sweep)
    assert len(jobs) == 15
    for job in jobs:
        record = read_metrics(job)
        assert (
            record["population"]["size"] == 15
            and (job / ".hydra" / "overrides.yaml").is_file()
            and (job / "train.log").is_file()
        )
        assert (
            (job / "trajectory.json").is_file()
            and list(job.glob("events.out.tfevents.*"))
            and (job / "hparams.yaml").is_file()
        )
        if record["status"] == "finished":
            for name in ("best", "last"):
                checkpoint = torch.load(job / "checkpoints" / f"{name}.ckpt", weights_only=True)
                assert set(checkpoint["state_dict"]) == {
                    "linear.weight",
                    "linear.bias",
                } and checkpoint["run_config"]["run_dir"] == str(job)
                assert (
                    checkpoint["optimizer_states"][0]["param_groups"][0]["lr"]
                    == record["hparams"]["optimizer.lr"]
                )
    diverged = [job.name for job in jobs if read_metrics(job)["status"] == "diverged"]
    for job in jobs:  # each job's log has its own summary or reason, and no other job's
        text = (job / "train.log").read_text()
        assert ("Finished in" in text) == (job.name not in diverged)
        assert [name for name in diverged if f"{name} diverged" in text] == (
            [job.name] if job.name in diverged else []
        )
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(sweep))
    multiplexer.Reload()
    statuses = {}
    for run, tags in multiplexer.PluginRunToTagToContent("hparams").items():
        for data in tags.values():
            parsed = plugin_data_pb2.HParamsPluginData.FromString(data)
            if parsed.HasField("session_end_info"):
                statuses[run] = parsed.session_end_info.status
    assert (
        sorted(statuses.values()).count(api_pb2.Status.Value("STATUS_SUCCESS")) == 13
        and len(statuses) == 15
    )
    scalars = multiplexer.PluginRunToTagToContent("scalars")
    assert all(
        {"train/loss", "val/loss", "test/loss", "best/val_loss"} <= set(scalars[job.name])
        for job in jobs
        if read_metrics(job)["status"] == "finished"
    )


def test_a_jobs_checkpoints_re_test_and_resume_as_a_single_runs(vectorized_cli, tmp_path: Path):
    sweep, _ = vectorized_cli
    job = sweep / "adam,lr=0.01"
    record = read_metrics(job)
    done = cli([f"run={job}"], tmp_path, module="experiments.evaluate")
    assert done.returncode == 0 and f"test/loss {record['test']['test/loss']:.6g}" in done.stdout
    done = cli([f"resume={job}", "trainer.max_epochs=800"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    straight = train_in_process(
        [*SHORT[:3], "trainer.max_epochs=800", "optimizer=adam", "optimizer.lr=0.01"],
        tmp_path / "straight",
    )
    resumed = read_metrics(job)
    assert resumed["epochs"] == 800 and resumed["parameters"] == straight["parameters"]


@pytest.mark.slow  # a process stopped mid-sweep, resumed, and compared with runs never stopped
def test_an_interrupted_population_resumes_where_it_stopped(tmp_path: Path):
    """Stopped mid-epoch (8 mini-batches an epoch), resumed: each job's weights and metric history,
    the interrupted epoch's train metrics included, are those of its run never stopped."""
    settings = [
        "experiment=linear_synthetic",
        "trainer.max_epochs=150",
        "trainer.check_val_every_n_epoch=15",
        "trainer.deterministic=true",
    ]
    args = [
        "-m",
        "hydra/launcher=vectorized",
        *settings,
        "optimizer=sgd,adam",
        "optimizer.lr=0.01",
        "callbacks.progress.plain_every_seconds=0.01",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    assert terminate_at_epoch(args, tmp_path, 40) == 143
    jobs = job_dirs(tmp_path / "sweep")
    stopped = [read_metrics(job) for job in jobs]
    assert [r["status"] for r in stopped] == ["interrupted", "interrupted"] and 39 * 8 <= stopped[
        0
    ]["steps"] < 150 * 8
    assert "resume=" in stopped[0]["reason"] and all(
        (job / "checkpoints" / "last.ckpt").is_file() for job in jobs
    )
    # the stopped sweep has no runs.csv or summary.csv yet: its tables come from its jobs
    stopped_sweep = api.load(tmp_path / "sweep")
    assert list(stopped_sweep.table["status"]) == ["interrupted", "interrupted"]
    assert list(stopped_sweep.configurations["seeds"]) == [1, 1]
    assert "interrupted" in stopped_sweep._repr_html_() and stopped_sweep.comparison is None
    done = cli(args, tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 jobs: 2 finished" in done.stdout
    for i, job in enumerate(jobs):
        record = read_metrics(job)
        optimizer = [o for o in record["overrides"] if o.startswith("optimizer")]
        straight = train_in_process([*settings, *optimizer], tmp_path / f"straight{i}")
        assert record["status"] == "finished" and record["parameters"] == straight["parameters"]
        assert record["metrics"] == straight["metrics"] and scalar_history(job) == scalar_history(
            tmp_path / f"straight{i}"
        )
        # the job's own summary, after the resume too
        assert "Finished in" in (job / "train.log").read_text()


def test_fail_fast_stops_the_population_at_its_first_diverged_job(tmp_path: Path):
    done = cli(
        [
            "-m",
            "hydra/launcher=vectorized",
            *SHORT[:3],
            "optimizer=sgd",
            "optimizer.lr=0.01,0.1",
            "fail_fast=true",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        tmp_path,
    )
    assert done.returncode == 1
    records = {
        tuple(r["overrides"]): r for r in (read_metrics(p) for p in job_dirs(tmp_path / "sweep"))
    }
    statuses = sorted(r["status"] for r in records.values())
    assert (
        statuses == ["diverged", "interrupted"]
        and not (tmp_path / "sweep" / "summary.csv").exists()
    )
    interrupted = next(r for r in records.values() if r["status"] == "interrupted")
    assert (
        "fail_fast" in interrupted["reason"]
        and Path(interrupted["run_dir"], "checkpoints", "last.ckpt").is_file()
    )
    # It stopped at a step boundary, so resuming it ends exactly where the job alone ends.
    done = cli([f"resume={interrupted['run_dir']}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = read_metrics(Path(interrupted["run_dir"]))
    alone = train_in_process([*SHORT, "optimizer=sgd", "optimizer.lr=0.01"], tmp_path / "alone")
    assert resumed["epochs"] == resumed["steps"] == 400 and {k: resumed[k] for k in SAME} == {
        k: alone[k] for k in SAME
    }


def test_a_job_refused_while_building_fails_alone_and_fail_fast_stops_before_anything_trains(
    tmp_path: Path,
):
    """A mistake found only when a job builds its model (a monitor its model does not log) fails
    that job alone; a value outside its domain refuses the whole sweep before it writes anything."""
    done = cli(
        [
            "-m",
            "hydra/launcher=vectorized",
            *SHORT[:3],
            "monitor=val/acc,val/loss",
            "optimizer.lr=0.01,0.001",
            f"hydra.sweep.dir={tmp_path / 'on'}",
        ],
        tmp_path,
    )
    assert (
        done.returncode == 1 and "4 jobs, 4 of them in 1 group(s) trained together" in done.stdout
    )
    assert "monitor=val/acc" in done.stderr
    records = sorted(
        (
            r["status"],
            *sorted(o for o in r["overrides"] if o.startswith(("optimizer.lr=", "monitor="))),
        )
        for r in map(read_metrics, (p.parent for p in (tmp_path / "on").glob("*/metrics.json")))
    )
    assert records == [
        ("failed", "monitor=val/acc", "optimizer.lr=0.001"),
        ("failed", "monitor=val/acc", "optimizer.lr=0.01"),
        ("finished", "monitor=val/loss", "optimizer.lr=0.001"),
        ("finished", "monitor=val/loss", "optimizer.lr=0.01"),
    ]
    done = cli(
        [
            "-m",
            "hydra/launcher=vectorized",
            *SHORT[:3],
            "monitor=val/acc,val/loss",
            "fail_fast=true",
            f"hydra.sweep.dir={tmp_path / 'stop'}",
        ],
        tmp_path,
    )
    assert done.returncode == 1 and "monitor=val/acc" in done.stderr
    assert not any(
        r["status"] == "finished" for r in map(read_metrics, job_dirs(tmp_path / "stop"))
    )
    done = cli(
        [
            "-m",
            "hydra/launcher=vectorized",
            *SHORT[:3],
            "optimizer.lr=-0.2,0.01,0.001",
            f"hydra.sweep.dir={tmp_path / 'refused'}",
        ],
        tmp_path,
    )
    assert done.returncode == 1
    assert done.stderr == "error: optimizer.lr must be a positive number, got -0.2.\n"
    assert not (tmp_path / "refused").exists()


def test_a_population_refuses_distributed_training_in_one_sentence(tmp_path: Path):
    done = cli(
        [
            "-m",
            "hydra/launcher=vectorized",
            "trainer=ddp_cpu",
            "experiment=thermometer",
            "optimizer.lr=0.01,0.1",
        ],
        tmp_path,
    )
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "hydra/launcher=vectorized trains a group of jobs in one process" in done.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("launcher", ["basic", "vectorized"])
def test_a_sweep_leaves_a_job_another_process_trains_alone_and_trains_the_others(
    tmp_path: Path, launcher: str
):
    """A job whose directory another live process holds is named in one sentence and left as it
    is; the sweep trains its other jobs and ends normally, on either launcher."""
    import sys

    sweep = tmp_path / "sweep"
    held = sweep / "lr=0.01"
    held.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)",
            str(held),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        done = cli(
            [
                "-m",
                "experiment=thermometer",
                "trainer.max_epochs=20",
                "optimizer.lr=0.01,0.02",
                f"hydra/launcher={launcher}",
                f"hydra.sweep.dir={sweep}",
            ],
            tmp_path,
        )
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"job={held} is in use by another run that is still training" in done.stderr
    # nothing trained there (Hydra's basic launcher writes a job's .hydra/ and opens its log
    # before the job starts)
    assert {p.name for p in held.iterdir()} <= {".hydra", "train.log"}
    other = read_metrics(sweep / "lr=0.02")
    assert other["status"] == "finished"
