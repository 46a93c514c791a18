"""Sweeps on a real one-node Slurm cluster that the tests start themselves (tests/slurm/
start-slurm.sh: Debian's slurm-wlm and munge, installed when missing; root only): each job a
Slurm job through hydra/launcher=slurm, a requeued job and one stopped by its time limit that
resume from their last.ckpt to the weights of an uninterrupted run, and a failed and a cancelled
job recorded while the sweep goes on. Without root or without Slurm's packages the tests are skipped, saying why."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import cli_in_process, job_dirs, read_metrics, train_in_process

TESTS = Path(__file__).resolve().parent
SLURM = TESTS / "slurm"  # the scripts and the sacct stand-in
BASE = Path(tempfile.gettempdir()) / "experiments-slurm"
# small Slurm jobs: one CPU each, no GPU
ON_SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]

TRAIN = "experiments.train"

pytestmark = pytest.mark.slow  # on one worker, the cluster's (conftest.TRAINED_ONCE)


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """A running cluster (started here, stopped after the module's tests) and what its clients
    need: SLURM_CONF, and the sacct stand-in first on PATH (without accounting, submitit would
    wait forever for a cancelled job)."""
    if os.geteuid() != 0:
        pytest.skip("starting Slurm's daemons and munge needs root")
    # five job slots on the two cores: the tests' jobs are small and mostly start up or wait
    env = {**os.environ, "SLURM_BASE": str(BASE), "SLURM_CPUS": "5"}
    started = subprocess.run(
        ["bash", str(SLURM / "start-slurm.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if started.returncode != 0:
        said = (started.stdout + started.stderr).strip().splitlines() or ["no output"]
        pytest.skip(f"Slurm could not start here: {said[-1]}")
    yield {
        "SLURM_CONF": str(BASE / "etc" / "slurm.conf"),
        "PATH": f"{SLURM}{os.pathsep}{os.environ['PATH']}",
    }
    subprocess.run(
        ["bash", str(SLURM / "stop-slurm.sh")], env=env, capture_output=True, timeout=300
    )


# 2500 steps under a one-minute limit. Slurm's notice (submitit asks for SIGUSR2 signal_delay_s
# before the limit; Slurm sends it at one of its 30 s checks, 30 to 60 s after the job started)
# finds the job's first run held at step 100 (tests/pace.py; or, if it came during the imports,
# the run that follows, whose limit starts again); the run it resumes trains the rest unheld
TIME_LIMITED = ["experiment=thermometer", "trainer.max_epochs=2500"]
HELD_AT = 100


@pytest.fixture(scope="module")
def time_limited(slurm: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sweep folder of a job with a one-minute time limit, submitted without waiting as the
    module's first test starts, so that its minute on the cluster passes while the other tests
    run; the module's last test collects it."""
    cwd = tmp_path_factory.mktemp("time_limited")
    limits = [
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=30",
        "hydra.launcher.max_num_timeout=5",
        "hydra.launcher.wait=false",
    ]
    pace = ["+callbacks.pace._target_=pace.Pace", f"+callbacks.pace.hold_at={HELD_AT}"]
    on_slurm = [o for o in ON_SLURM if not o.startswith("hydra.launcher.timeout_min=")]
    env = {"CI": "true", "PYTHONPATH": str(TESTS), **slurm}  # the job imports tests/pace.py
    done = cli_in_process(["-m", *on_slurm, *limits, *TIME_LIMITED, *pace], cwd, env, TRAIN)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = (cwd / "outputs" / "sweeps").iterdir()
    return folder


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """TIME_LIMITED trained here, never stopped: where the requeued and the time-limited job must
    end (how often they validate and an EarlyStopping that never stops change no weight)."""
    return train_in_process(TIME_LIMITED, tmp_path_factory.mktemp("straight"))


def start_sweep(args: list[str], cwd: Path, slurm: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.train", "-m", *ON_SLURM, *args],
        cwd=cwd,
        env={**os.environ, "CI": "true", "XDG_CACHE_HOME": str(cwd / ".cache"), **slurm},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def slurm_job_training(cwd: Path, job: str, steps: int, sweep: subprocess.Popen) -> str:
    """The Slurm id of the sweep's job `job` (its folder's name) once it has trained `steps`
    steps: submitit writes it into the job's hydra.job.id."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert sweep.poll() is None, sweep.communicate()[1][-3000:]
        found = list(cwd.glob(f"outputs/sweeps/*/{job}"))
        if found and (found[0] / "metrics.json").is_file():
            record = read_metrics(found[0])
            if record["status"] == "running" and record["steps"] >= steps:
                return str(OmegaConf.load(found[0] / ".hydra" / "hydra.yaml").hydra.job.id)
        time.sleep(0.2)
    raise AssertionError(f"job {job} did not reach {steps} steps")


def test_a_slurm_sweep_resumes_a_requeued_job_and_records_a_failed_and_a_cancelled_one(
    slurm: dict[str, str], time_limited: Path, straight: dict, tmp_path: Path
):
    """One sweep of four Slurm jobs. A preemption (`scontrol requeue`: SIGTERM,
    the job stops at a step boundary with its last.ckpt, Slurm starts it again in its directory)
    ends at exactly the weights of an uninterrupted run; a job cancelled by `scancel` and two that
    fail at their first validation are recorded in their metrics.json while the sweep goes on."""
    stop = [
        "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping",
        "+callbacks.stop.patience=1000000",
    ]
    common = ["experiment=thermometer", "trainer.check_val_every_n_epoch=100", *stop]
    sweep = start_sweep(
        [*common, "trainer.max_epochs=2500,100000", "+callbacks.stop.monitor=val/loss,nonexistent"],
        tmp_path,
        slurm,
    )
    preempted, cancelled = "max_epochs=2500,monitor=val_loss", "max_epochs=100000,monitor=val_loss"
    requeued = slurm_job_training(tmp_path, preempted, 1000, sweep)
    subprocess.run(["scontrol", "requeue", requeued], env={**os.environ, **slurm}, check=True)
    scancelled = slurm_job_training(tmp_path, cancelled, 300, sweep)
    subprocess.run(["scancel", scancelled], env={**os.environ, **slurm}, check=True)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 1, err[-3000:]  # a job did not finish: the sweep says so at its end
    (folder,) = (tmp_path / "outputs" / "sweeps").iterdir()
    records = {job.name: read_metrics(job) for job in job_dirs(folder)}
    assert len(records) == 4 and "4 jobs: 1 finished" in out

    record = records[preempted]
    assert record["status"] == "finished" and record["steps"] == 2500
    log = (folder / preempted / "train.log").read_text()  # it did stop, and went on from there
    assert "interrupted by SIGTERM" in log and "continues from checkpoints/last.ckpt" in log
    assert record["parameters"] == straight["parameters"]  # exactly where an unstopped job ends

    for failed in ("max_epochs=2500,monitor=nonexistent", "max_epochs=100000,monitor=nonexistent"):
        assert records[failed]["status"] == "failed"
        assert "Early stopping conditioned on metric `nonexistent`" in records[failed]["reason"]
    record = records[cancelled]
    assert record["status"] == "interrupted" and 300 <= record["steps"] < 100000
    assert f"Slurm job {scancelled} ended CANCELLED" in record["reason"]
    assert (folder / cancelled / "checkpoints" / "last.ckpt").is_file()  # a rerun resumes it


def test_a_sweep_submitted_without_waiting_is_collected_as_its_jobs_end(
    slurm: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    from experiments import collect

    env = {"CI": "true", **slurm}
    refused = cli_in_process(
        ["-m", *ON_SLURM, "hydra.launcher.wait=false", "sweep=compare"], tmp_path, env, TRAIN
    )
    assert refused.returncode == 1 and "but the CompareSweeper chooses its next jobs" in (
        refused.stderr
    )
    assert not (tmp_path / "outputs").exists()
    search = ["-m", *ON_SLURM, "hydra.launcher.wait=false", "hydra/sweeper=optuna"]
    refused = cli_in_process([*search, "optimizer.lr=interval(0.01,0.1)"], tmp_path, env, TRAIN)
    assert refused.returncode == 1 and "but the OptunaSweeper chooses its next jobs" in (
        refused.stderr
    )
    assert not (tmp_path / "outputs").exists()
    args = ["experiment=thermometer", "trainer.max_epochs=300", "optimizer.lr=0.001,0.01"]
    done = cli_in_process(
        ["-m", *ON_SLURM, "hydra.launcher.wait=false", *args], tmp_path, env, TRAIN
    )
    assert done.returncode == 0, done.stderr
    (folder,) = (tmp_path / "outputs" / "sweeps").iterdir()
    assert f"python -m experiments.collect {folder.relative_to(tmp_path)}" in done.stdout
    assert not (folder / "summary.csv").exists()  # nothing has trained yet
    # the same command into the same folder while they wait: nothing is submitted twice
    again = cli_in_process(
        ["-m", *ON_SLURM, "hydra.launcher.wait=false", *args, f"hydra.sweep.dir={folder}"],
        tmp_path,
        env,
        TRAIN,
    )
    assert again.returncode == 0, again.stderr
    said = again.stdout + again.stderr
    assert "submitted 0 Slurm job(s) for 0 sweep job(s)" in said, said[-2000:]
    assert len(re.findall(r"as Slurm job \S+; not submitted again", said)) == 2
    assert len(json.loads((folder / "slurm_jobs.json").read_text())["jobs"]) == 2

    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert collect.main([str(folder)]) == 0  # at once: the jobs are still starting
    said = capsys.readouterr().out
    assert "0 of 2 Slurm jobs have ended." in said and said.count("not yet: #") == 2
    deadline = time.monotonic() + 180
    while not (
        len(jobs := job_dirs(folder)) == 2
        and all((j / "metrics.json").is_file() for j in jobs)
        and all(read_metrics(j)["status"] == "finished" for j in jobs)
    ):
        assert time.monotonic() < deadline, "the jobs did not finish"
        time.sleep(0.5)
    assert collect.main([str(folder)]) == 0
    said = capsys.readouterr().out
    assert "2 of 2 Slurm jobs have ended." in said and "not yet" not in said, said[-600:]
    assert len((folder / "runs.csv").read_text().splitlines()) == 3  # a header and two jobs
    records = {j: (j / "metrics.json").stat().st_mtime_ns for j in job_dirs(folder)}
    assert collect.main([str(folder)]) == 0  # again: it retrains nothing
    assert {j: (j / "metrics.json").stat().st_mtime_ns for j in job_dirs(folder)} == records

    assert collect.main([str(tmp_path)]) == 1  # not a sweep's folder: one sentence
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path} is not a sweep's folder: it has no multirun.yaml.\n"
    )


def test_sweep_compare_on_slurm_trains_each_stage_as_populations_with_the_vectorized_table(
    slurm: dict[str, str], tmp_path: Path
):
    """hydra.launcher.populations=true: each stage's jobs that can share every batch train as one
    population in one Slurm job (the 6 jobs of this comparison in 2 Slurm jobs), to the table
    hydra/launcher=vectorized gives on one machine."""
    compare = [
        "sweep=compare",
        "experiment=thermometer",
        "optimizer=sgd,adam",
        "optimizer.lr=0.01,0.1",
        "hydra.sweeper.seeds=2",
        "hydra.sweeper.studies=1",
        "hydra.sweeper.baselines=false",
        "trainer.max_epochs=100",
    ]
    on_slurm = tmp_path / "slurm"
    on_slurm.mkdir()
    populations = [*ON_SLURM, "hydra.launcher.populations=true"]
    done = cli_in_process([*populations, *compare], on_slurm, {"CI": "true", **slurm}, TRAIN)
    assert done.returncode == 0, done.stderr[-3000:]
    submitted = re.findall(r"submitted (\d+) Slurm job\(s\) for (\d+) sweep job\(s\)", done.stdout)
    assert submitted == [("1", "4"), ("1", "2")]  # stage 1: 4 points; stage 2: 2 more seeds
    here = tmp_path / "here"
    here.mkdir()
    alone = cli_in_process(["hydra/launcher=vectorized", *compare], here, {"CI": "true"}, TRAIN)
    assert alone.returncode == 0, alone.stderr[-3000:]
    tables = [next((d / "outputs" / "sweeps").iterdir()) / "summary.csv" for d in (on_slurm, here)]
    assert tables[0].read_text() == tables[1].read_text()


def test_a_job_stopped_by_its_time_limit_resumes_to_the_weights_of_an_uninterrupted_run(
    slurm: dict[str, str], time_limited: Path, straight: dict
):
    """Slurm's notice before the time limit (SIGUSR2, submitit's) stops training at a step
    boundary with its last.ckpt; submitit then requeues the job, which continues from there and
    ends at exactly the weights of a run that was never stopped."""
    deadline = time.monotonic() + 240
    while not (
        len(jobs := job_dirs(time_limited)) == 1
        and (jobs[0] / "metrics.json").is_file()
        and read_metrics(jobs[0])["status"] == "finished"
    ):
        assert time.monotonic() < deadline, "the time-limited job did not finish"
        time.sleep(0.5)
    (job,) = jobs
    record = read_metrics(job)
    assert record["steps"] == 2500
    log = (job / "train.log").read_text()
    assert "this job is timed-out" in log  # submitit's word for the notice
    stops = re.findall(
        r"Interrupted in .* (\d+) steps\. Reason: interrupted by Slurm's notice", log
    )
    assert stops and all(int(step) == HELD_AT for step in stops), log[-3000:]
    assert "continues from checkpoints/last.ckpt" in log
    assert record["parameters"] == straight["parameters"]
