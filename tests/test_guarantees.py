"""Run directories you can trust: no later command damages a run, nothing mixes silently, every
mistake is one sentence, exit code 1 and nothing left behind. Real processes throughout: what is
pinned here is what a user at a shell sees."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import (
    cli,
    cli_in_process,
    fake_mnist,
    job_dirs,
    only_run_dir,
    read_metrics,
    train_in_process,
)

SHORT = ["experiment=thermometer", "trainer.max_epochs=300", "trainer.check_val_every_n_epoch=100"]
CORES = len(os.sched_getaffinity(0))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def changed(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def one_sentence(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """The process stopped with exit code 1 and exactly one line on stderr, holding each fragment."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("finished")
    done = cli([*SHORT, "logger=csv"], cwd)
    assert done.returncode == 0, done.stderr
    return only_run_dir(cwd)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("digits_run")
    root = fake_mnist(cwd / "digits")
    done = cli(
        ["experiment=mnist", f"data.root={root}", "data.val_size=40", "trainer.max_epochs=1"], cwd
    )
    assert done.returncode == 0, done.stderr
    return only_run_dir(cwd)


# 1. A refused resume leaves the run as it was.
@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["trainer.max_epochs=100"], ["finished its 300 epochs", "trainer.max_epochs above 300"]),
        (["trainer.max_epochs=300"], ["finished its 300 epochs"]),
        (["experiment=mnist"], ["would change it", "ckpt_path="]),
        (["optimizer.lr=0.5", "trainer.max_epochs=600"], ["optimizer.lr=0.5 would change it"]),
    ],
)
def test_a_refused_resume_leaves_the_finished_run_byte_for_byte(
    extra: list[str], fragments: list[str], finished_run: Path, tmp_path: Path
):
    before = snapshot(finished_run)
    one_sentence(cli([f"resume={finished_run}", *extra], tmp_path), *fragments)
    assert snapshot(finished_run) == before
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "schedule, key",
    [
        (["scheduler=cosine"], "scheduler.T_max=${trainer.max_epochs}"),
        (["optimizer=momentum", "scheduler=onecycle"], "scheduler.total_steps=null"),
    ],
)
def test_resuming_a_scheduled_run_for_more_epochs_is_refused_untouched(
    schedule: list[str], key: str, tmp_path: Path
):
    """Its schedule was laid out over its own length: torch would stop OneCycleLR with an error past
    its last step, and cosine's state would climb back up while the records said otherwise."""
    run = tmp_path / "run"
    assert cli([*SHORT, *schedule, f"hydra.run.dir={run}"], tmp_path).returncode == 0
    before = snapshot(run)
    one_sentence(
        cli([f"resume={run}", "trainer.max_epochs=600"], tmp_path),
        "cannot continue its schedule, laid out over its 300 epochs",
        key,
    )
    assert snapshot(run) == before
    done = cli([f"resume={run}", "--cfg", "job"], tmp_path)  # Hydra's flags go through with resume=
    assert done.returncode == 0 and f"resume: {run}" in done.stdout


def test_a_sweep_into_a_run_is_refused_and_a_folders_own_event_files_are_kept(
    finished_run: Path, tmp_path: Path
):
    before = snapshot(finished_run)
    one_sentence(
        cli(["-m", *SHORT, "optimizer.lr=0.01,0.02", f"hydra.sweep.dir={finished_run}"], tmp_path),
        "holds a run",
        "pick another directory",
    )
    assert snapshot(finished_run) == before
    logs = tmp_path / "mylogs"
    logs.mkdir()
    (logs / "events.out.tfevents.1.mine").write_bytes(b"kept")
    # run again into it: one experiment of the sweep's own, and the folder's file untouched
    for _ in range(2):
        done = cli(
            [
                "-m",
                *SHORT,
                "trainer.max_epochs=100",
                "optimizer.lr=0.01,0.02",
                f"hydra.sweep.dir={logs}",
            ],
            tmp_path,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert (logs / "events.out.tfevents.1.mine").read_bytes() == b"kept" and len(
        list(logs.glob(".sweep/events.out.tfevents.*.sweep"))
    ) == 1


def test_a_run_whose_data_moved_is_refused_untouched_and_resumes_once_pointed_at_it(
    digits_run: Path, tmp_path: Path
):
    record = read_metrics(digits_run)
    moved = tmp_path / "moved"
    shutil.copytree(digits_run.parent.parent.parent / "digits", moved)
    shutil.rmtree(digits_run.parent.parent.parent / "digits")
    before = snapshot(digits_run)
    try:
        one_sentence(
            cli([f"resume={digits_run}", "trainer.max_epochs=2", "data.download=false"], tmp_path),
            "No MNIST files",
        )
        assert changed(before, snapshot(digits_run)) == []
        done = cli([f"resume={digits_run}", "trainer.max_epochs=2", f"data.root={moved}"], tmp_path)
        assert done.returncode == 0, done.stderr
        assert read_metrics(digits_run)["epochs"] == 2 and record["epochs"] == 1
        # a saved run re-tests on data that moved, too
        done = cli(
            [f"run={digits_run}", f"data.root={moved}"], tmp_path, module="experiments.evaluate"
        )
        assert done.returncode == 0 and "test/acc" in done.stdout
    finally:
        shutil.copytree(moved, digits_run.parent.parent.parent / "digits", dirs_exist_ok=True)


# 2. One live run per directory; a directory holding a run is not reused.
def test_a_second_run_into_a_directory_is_refused_while_the_first_trains_and_after(tmp_path: Path):
    same = tmp_path / "runs" / "same"
    env = {**os.environ, "CI": "true", "XDG_CACHE_HOME": str(tmp_path / ".cache")}
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "experiment=thermometer",
            "trainer.max_epochs=200000",
            f"hydra.run.dir={same}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (same / "metrics.json").is_file():
            assert time.monotonic() < deadline and first.poll() is None, (
                "the first run never started training"
            )
            time.sleep(0.1)
        second = cli(["experiment=thermometer_adam", f"hydra.run.dir={same}"], tmp_path)
        one_sentence(second, f"hydra.run.dir={same}")
        assert "in use by another run" in second.stderr or "already holds a run" in second.stderr
        resume = cli([f"resume={same}"], tmp_path)
        one_sentence(resume, "is in use by another run that is still training")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert read_metrics(same)["status"] == "running"  # killed: what it recorded at start stays
    # one process wrote there
    assert len({p.name.split(".")[-2] for p in same.glob("events.out.tfevents.*")}) == 1
    before = snapshot(same)
    one_sentence(
        cli(["experiment=thermometer_adam", f"hydra.run.dir={same}"], tmp_path),
        "already holds a run",
        f"resume={same}",
    )
    assert snapshot(same) == before


# 3. No more devices than the machine has.
def test_more_devices_than_cores_is_refused_before_any_process_starts(tmp_path: Path):
    done = cli(["trainer=ddp_cpu", f"trainer.devices={CORES + 1}"], tmp_path, timeout=120)
    one_sentence(done, f"trainer.devices={CORES + 1}", f"this machine has {CORES} CPU cores")
    assert not (tmp_path / "outputs").exists()


# 4. A sweep run again into its directory runs only what is left.
def test_a_sweep_run_again_leaves_finished_and_diverged_jobs_alone(tmp_path: Path):
    sweep = tmp_path / "sweep"
    args = ["-m", *SHORT, "data.input_scale=null", f"hydra.sweep.dir={sweep}"]
    assert cli([*args, "optimizer.lr=1e-5,1e-2"], tmp_path).returncode == 0
    jobs = {p.name: snapshot(p) for p in job_dirs(sweep)}
    statuses = sorted(read_metrics(sweep / name)["status"] for name in jobs)
    assert statuses == ["diverged", "finished"]
    done = cli([*args, "optimizer.lr=1e-5,1e-2,1e-6"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "2 of 3 jobs already have a final result" in done.stdout + done.stderr
    assert {
        name: snapshot(sweep / name) for name in jobs
    } == jobs  # not a byte changed, no event file added
    assert len(job_dirs(sweep)) == 3
    # one HParams experiment, in the sweep's own run
    assert len(list(sweep.glob("**/events.out.tfevents.*.sweep"))) == 1
    assert "3 jobs: 2 finished, 1 diverged" in done.stdout


# 5. Validation happens at the end of training.
def test_a_run_shorter_than_its_validation_interval_still_validates_at_the_end(tmp_path: Path):
    # validates every 500
    result = train_in_process(["experiment=thermometer", "trainer.max_epochs=300"], tmp_path)
    assert result["metrics"]["val/loss"]["final_epoch"] == 300
    assert (
        result["monitor"]["best"] is not None and (tmp_path / "checkpoints" / "best.ckpt").is_file()
    )


# 6. Data errors leave nothing behind.
def test_missing_data_leaves_no_run_and_creates_nothing_in_data_root(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_sentence(
        cli(["experiment=mnist", f"data.root={empty}"], tmp_path), f"No MNIST files in {empty}/"
    )
    assert list(empty.iterdir()) == [] and not (tmp_path / "outputs").exists()


def test_half_the_files_are_named_as_missing(tmp_path: Path):
    from experiments.core.config import UserError
    from experiments.data.mnist import MNISTDataModule

    root = fake_mnist(tmp_path / "half")
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (root / name).unlink()
    with pytest.raises(
        UserError, match="lack t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
    ) as error:
        MNISTDataModule(root=str(root), download=False).load()
    assert "\n" not in str(error.value)


# 7. Mistakes are one sentence, exit 1, nothing written.
MISTAKES = [
    (["seed=abc"], ["seed must be an integer from 0 to 4294967295, got 'abc'"]),
    (  # a preset turns on multirun: the typo is named, not the valid list beside it
        ["experiment=thermometer", "sweep=lr", "optimizer.lr=0.1,0.2", "optimizer.lrr=1"],
        ["optimizer.lrr is not a key of optimizer: did you mean optimizer.lr?"],
    ),
    (
        ["experiment=thermometer", "optimizer.lr=0.1,0.2"],
        [
            "optimizer.lr=0.1,0.2 gives optimizer.lr several values: add -m",
            "optimizer.lr=[0.1,0.2]",
        ],
    ),
    (  # options of a config group are never one value: no list or quotes to suggest
        ["optimizer=sgd,adam"],
        ["optimizer=sgd,adam gives optimizer several options: add -m to run a job for each."],
    ),
    (
        ["experiment=thermometer", "sweep=compare", "seed=0,1"],
        ["sweep=compare chooses the seeds itself", "hydra.sweeper.seeds"],
    ),
    (
        ["experiment=thermometer", "sweep=compare", "model.init_weight=0.5,1.0"],
        ["but model.init_weight is swept too", "give model.init_weight one value"],
    ),
    (
        ["experiment=thermometer", "sweep=compare", "hydra.sweeper.seeds=0"],
        ["hydra.sweeper.seeds must be a positive integer, got 0"],
    ),
    (
        ["experiment=thermometer", "sweep=compare", "hydra.sweeper.studies=0"],
        ["hydra.sweeper.studies must be a positive integer, got 0"],
    ),
    (
        ["experiment=thermometer", "sweep=compare", "hydra.sweeper.baselines=maybe"],
        ["hydra.sweeper.baselines must be true", "or false", "got 'maybe'"],
    ),
    (
        ["experiment=thermometer", "sweep=compare", "hydra.sweeper.tolerance=-0.1"],
        ["hydra.sweeper.tolerance must be a number of at least 0, got -0.1"],
    ),
    (
        ["experiment=thermometer", "sweep=compare", "hydra.sweeper.target=low"],
        ["hydra.sweeper.target must be a finite number or null", "got 'low'"],
    ),
    (["seed=-1"], ["seed must be an integer"]),
    (
        ["optimizer=adam", "optimizer.betas=[0.9]"],
        ["optimizer settings rejected by torch.optim.Adam"],
    ),
    (
        ["monitor=val/accuracy"],
        ["monitor=val/accuracy is not a metric this model logs", "val/loss"],
    ),
    (
        ["optimizer.learning_rate=0.1"],
        ["optimizer.learning_rate is not a key of optimizer", "did you mean optimizer.lr?"],
    ),
    (["seeed=3"], ["seeed is not a key of the config", "did you mean seed?"]),
    (["+newkey=1"], ["+newkey=1 adds a key nothing here reads"]),
    (
        ["experiment=mnist", "data.root=/tmp/données"],
        ["only in quotes", "'data.root=\"/tmp/données\"'"],
    ),
    (["optimizer=adamm"], ["Could not find 'optimizer/adamm'", "rmsprop"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs must be a positive integer"]),
    (
        ["scheduler=onecycle", "optimizer=adagrad"],
        ["scheduler settings rejected by torch.optim.lr_scheduler.OneCycleLR"],
    ),
    (
        ["-m", "hydra/sweeper=optuna", "seed=glob(*)"],
        ["seed=glob(*) offers no value to choose from"],
    ),
    (
        ["-m", "hydra/sweeper=optuna", "hydra.sweeper.direction=[minimize,maximize]"],
        ["hydra.sweeper.direction has 2 values", "optimises one objective"],
    ),
    (
        [
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,bogus:1}",
        ],
        ["hydra.sweeper.pruner:", "unexpected keyword argument 'bogus'"],
    ),
    (
        ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=0"],
        ["hydra.sweeper.n_trials must be a positive integer, got 0"],
    ),
    (
        ["-m", "resume=outputs/runs/x", "optimizer=sgd,adam"],
        ["resume= continues one run; run it without -m"],
    ),
    (
        ["-m", "hydra/launcher=vectorized", "resume=outputs/runs/x", "optimizer=sgd,adam"],
        ["resume= continues one run; run it without -m"],
    ),
    (
        ["-m", "hydra/sweeper=optuna", "hydra.sweeper.storage=sqlite:////nonexistent/dir/x.db"],
        [
            "hydra.sweeper.storage=sqlite:////nonexistent/dir/x.db cannot be opened",
            "unable to open database file",
        ],
    ),
    (
        ["-m", "hydra/sweeper=optuna", "optimizer.lr=tag(log,interval(1,0))"],
        ["is not a range Optuna can draw from", "low <= high"],
    ),
    (
        ["-m", "optimizer.lrr=0.1,0.2"],
        ["optimizer.lrr is not a key of optimizer", "did you mean optimizer.lr?"],
    ),
    (
        ["-m", "optimizer=choice(adam,nosuchopt)"],
        ["Could not find 'optimizer/nosuchopt'", "adagrad, adam"],
    ),
    (
        ["-m", "hydra/launcher=vectorized", "optimizer.lrr=3", "optimizer.lr=0.1,0.2"],
        ["optimizer.lrr is not a key of optimizer", "did you mean optimizer.lr?"],
    ),
    (
        ["scheduler=step", "scheduler.frequency=0"],
        ["scheduler.frequency must be a positive integer", "got 0"],
    ),
    (
        ["model._target_=experiments.models.nowhere.Model"],
        [
            "model._target_=experiments.models.nowhere.Model cannot be imported",
            "give a class that exists",
        ],
    ),
    (
        ["experiment=thermometer", "scheduler=plateau", "scheduler.monitor=val/acc"],
        ["scheduler.monitor=val/acc is not a metric this model logs", "val/loss"],
    ),
    (
        ["experiment=thermometer", "scheduler=plateau", "scheduler.mode=max"],
        ["scheduler.mode=max but val/loss is better when lower", "scheduler.mode=min"],
    ),
    (
        ["model.optimizer.lr=0.1"],
        ["model.optimizer.lr is lightning-hydra-template's key; here it is optimizer.lr"],
    ),
    (
        ["-m", "model.net.lin1_size=64,128"],
        ["model.net.lin1_size is lightning-hydra-template's key; here it is model.hidden"],
    ),
    (
        ["-m", "hydra/sweeper=optuna", "hydra.sweeper.direction=maximize"],
        ["hydra.sweeper.direction=maximize contradicts val/loss, which is better when lower"],
    ),
    (
        ["-m", "hydra/sweeper=optuna", "optimized_metric=val/acc_best"],
        ["optimized_metric=val/acc_best names val/acc, which this model does not log"],
    ),
    (
        ["-m", "hydra/sweeper=optuna", "hydra.sweeper.max_failure_rate=2"],
        ["hydra.sweeper.max_failure_rate must be a number from 0 to 1"],
    ),
    (
        ["-m", "hydra/sweeper=optuna", "hydra.sweeper.direction=up"],
        ["hydra.sweeper.direction must be minimize, maximize or null", "got 'up'"],
    ),
    (
        [
            "-m",
            "hydra/sweeper=optuna",
            "+hydra.sweeper.search_space={optimizer.lr:{type:float,low:0.001,high:0.1}}",
        ],
        ["hydra.sweeper.search_space is the official plugin's old form"],
    ),
    (
        ["-m", "hydra/sweeper=optuna", "hydra.sweeper.custom_search_space=nowhere.extend"],
        ["hydra.sweeper.custom_search_space=nowhere.extend cannot be imported"],
    ),
    (
        ["-m", "optimizer=sgd,adam", "optimizer.momentum=0.5"],
        ["optimizer.momentum is not a key of optimizer (optimizer=adam)", "lr, betas"],
    ),
    (
        ["scheduler.step_size=3"],
        [
            "scheduler.step_size is not a key of scheduler, which holds nothing with the option chosen"
        ],
    ),
    (
        ["scheduler=step", "scheduler.step_size=0"],
        ["scheduler.step_size must be a positive integer"],
    ),
    (
        ["experiment=thermometer", "monitor=train/loss"],
        ["monitor=train/loss is not a validation metric", "val/loss"],
    ),
    (
        ["experiment=thermometer", "scheduler=onecycle"],
        ["scheduler=onecycle cycles the momentum", "scheduler.cycle_momentum=false"],
    ),
    (
        [
            "experiment=thermometer",
            "optimizer=adam",
            "scheduler=onecycle",
            "scheduler.total_steps=10",
        ],
        ["scheduler.total_steps=10 is fewer than the fit's 5000 optimizer steps"],
    ),
    (["-m", "--cfg", "job"], ["Only one of --run, --multirun", "drop -m"]),
    (
        [
            "-m",
            "hydra/sweeper=optuna",
            "optimizer.lrr=interval(0.1,0.2)",
            "hydra.sweeper.storage=sqlite:///study.db",
        ],
        ["optimizer.lrr is not a key of optimizer"],
    ),
]


# The other entry points that make a directory refuse the same way.
ENTRY_MISTAKES = [
    (
        "experiments.lr_find",
        ["experiment=thermometer", "optimizer.lr=abc"],
        ["optimizer.lr must be a positive number, got 'abc'"],
    ),
    (
        "experiments.lr_find",
        ["lr_find.mode=cubic"],
        ["lr_find.mode must be exponential or linear, got 'cubic'"],
    ),
    (
        "experiments.gradcheck",
        ["gradcheck.coordinates=0"],
        ["gradcheck.coordinates must be a positive integer"],
    ),
    (
        "experiments.lr_find",
        ["lr_find.num_training=0"],
        ["lr_find.num_training must be an integer of at least 2"],
    ),
    (
        "experiments.lr_find",
        ["experiment=thermometer", "trainer=ddp_cpu"],
        ["experiments.lr_find runs the range test in one process on one device"],
    ),
    (
        "experiments.lr_find",
        ["ckpt_path=outputs/runs/x/checkpoints/last.ckpt"],
        [
            "experiments.lr_find tests learning rates from the model's initial weights, so it takes no ckpt_path="
        ],
    ),
    (
        "experiments.lr_find",
        ["-m", "hydra/launcher=vectorized", "optimizer=adam,sgd"],
        ["hydra/launcher=vectorized trains the jobs of experiments.train together"],
    ),
    (
        "experiments.gradcheck",
        ["-m", "optimizer=adam,sgd"],
        ["experiments.gradcheck checks the gradient of one configuration; run it without -m"],
    ),
    (
        "experiments.evaluate",
        ["-m", "run=outputs/runs/x", "checkpoint=best,last"],
        ["experiments.evaluate re-tests one run; run it without -m"],
    ),
]


@pytest.mark.parametrize(
    "module, args, fragments",
    ENTRY_MISTAKES,
    ids=[f"{m} {' '.join(a)}" for m, a, _ in ENTRY_MISTAKES],
)
def test_a_mistake_of_another_entry_point_is_one_sentence_and_leaves_nothing(
    module: str, args: list[str], fragments: list[str], tmp_path: Path
):
    one_sentence(cli(args, tmp_path, module=module), *fragments)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("args, fragments", MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_a_mistake_is_one_sentence_and_leaves_nothing(
    args: list[str], fragments: list[str], finished_run: Path, tmp_path: Path
):
    before = snapshot(finished_run)
    one_sentence(cli(args, tmp_path), *fragments)
    assert not (tmp_path / "outputs").exists() and not list(tmp_path.glob("*.db"))
    assert snapshot(finished_run) == before


TRAIN = "experiments.train"


def test_a_slurm_sweep_without_slurm_or_without_its_controller_is_one_sentence(tmp_path: Path):
    """Without Slurm's commands on PATH, and with them but no controller to answer, the sweep
    stops before submitting anything, in one sentence."""
    slurm_sweep = ["-m", "hydra/launcher=slurm", "trainer.max_epochs=1", "seed=0,1"]
    no_slurm = tmp_path / "no-slurm-here"
    no_slurm.mkdir()
    done = cli_in_process(slurm_sweep, tmp_path, {"CI": "true", "PATH": str(no_slurm)}, TRAIN)
    one_sentence(done, "hydra/launcher=slurm needs SLURM", "hydra/launcher=basic")
    assert not (tmp_path / "outputs").exists()
    if shutil.which("sinfo") is None:
        pytest.skip("Slurm's client is not installed: the unreachable controller needs it")
    # a login node whose slurm.conf names no cluster (a missing one waits on DNS for a minute)
    (tmp_path / "slurm.conf").write_text("")
    nowhere = {"CI": "true", "SLURM_CONF": str(tmp_path / "slurm.conf")}
    done = cli_in_process(slurm_sweep, tmp_path, nowhere, TRAIN)
    one_sentence(
        done,
        "found Slurm's commands but no Slurm controller answers",
        "Unable to process configuration file",
        str(tmp_path / "slurm.conf"),
    )
    assert not (tmp_path / "outputs").exists()


def test_a_checkpoint_of_another_model_is_refused(digits_run: Path, tmp_path: Path):
    done = cli([*SHORT, f"ckpt_path={digits_run}/checkpoints/last.ckpt"], tmp_path)
    one_sentence(
        done, "holds the weights of a MLPClassifier", "do not fit this run's LinearRegression"
    )
    assert not (tmp_path / "outputs").exists()


def test_an_unwritable_cache_dir_is_one_sentence(tmp_path: Path):
    (tmp_path / "a_file").write_text("")
    root = fake_mnist(tmp_path / "digits")
    done = cli(
        [
            "experiment=mnist",
            f"data.root={root}",
            f"data.cache_dir={tmp_path / 'a_file' / 'cache'}",
        ],
        tmp_path,
    )
    one_sentence(done, f"data.cache_dir={tmp_path / 'a_file' / 'cache'} cannot be written")


@pytest.mark.parametrize(
    "args, fragments",
    [
        ([], ["run= is required"]),
        (["run=nowhere", "inputs=[abc]"], ["inputs must be one or more numbers"]),
        (["run=nowhere", "inputs=[]"], ["inputs must be one or more numbers", "got []"]),
        (
            ["run=nowhere", "accelerator=tpu"],
            ["accelerator must be cpu, gpu, mps or auto, got 'tpu'"],
        ),
        (["run=nowhere", "checkpoint=middle"], ["checkpoint must be best or last"]),
        (
            ["run=nowhere", "accelerator=gpu"]
            if not torch.cuda.is_available()
            else ["run=nowhere"],
            ["run=nowhere"]
            if torch.cuda.is_available()
            else ["accelerator=gpu but this machine has no usable GPU; use accelerator=cpu."],
        ),
    ],
)
def test_evaluate_mistakes_are_one_sentence(args: list[str], fragments: list[str], tmp_path: Path):
    one_sentence(cli(args, tmp_path, module="experiments.evaluate"), *fragments)


STARTS = {
    "run": (["trainer.max_epochs=1"], "outputs/runs/*/.hydra/overrides.yaml"),
    "run, SIGTERM": (["trainer.max_epochs=1"], "outputs/runs/*/.hydra/overrides.yaml"),
    "population, SIGTERM": (
        ["-m", "hydra/launcher=vectorized", "trainer.max_epochs=1", "optimizer.lr=0.1,0.2"],
        "outputs/sweeps/*/*/.hydra/overrides.yaml",
    ),
    "sweep": (
        ["-m", "trainer.max_epochs=1", "optimizer.lr=0.1,0.2"],
        "outputs/sweeps/*/*/.hydra/overrides.yaml",
    ),
    "optuna": (
        [
            "-m",
            "trainer.max_epochs=1",
            "hydra/sweeper=optuna",
            "optimizer.lr=interval(0.1,0.2)",
            "hydra.sweeper.n_jobs=1",
        ],
        "outputs/sweeps/*/*/.hydra/overrides.yaml",
    ),
}


@pytest.mark.parametrize("start", STARTS)
def test_ctrl_c_while_starting_leaves_no_directory(start: str, tmp_path: Path):
    """Ctrl-C or SIGTERM while the first job loads torch: its directory goes, and so does a sweep's
    (with its multirun.yaml and Optuna journal)."""
    args, made = STARTS[start]
    env = {**os.environ, "CI": "true", "XDG_CACHE_HOME": str(tmp_path / ".cache")}
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(made)):  # Hydra made the run directory; torch is still loading
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    signum = signal.SIGTERM if "SIGTERM" in start else signal.SIGINT
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum
    assert stderr.strip() == "interrupted before training started; nothing was kept"
    assert not (tmp_path / "outputs").exists()


def test_ctrl_c_while_hydra_is_still_setting_up_the_run_leaves_no_directory(tmp_path: Path):
    """The interruption lands after Hydra made the run directory but before the run's own handler:
    the same sentence, and the directory goes too."""
    script = textwrap.dedent(
        """
        import experiments.train as train
        from experiments.cli import run_cli

        def interrupted(cfg):
            raise KeyboardInterrupt
        train.run_info = interrupted
        run_cli(train.main, "train")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "trainer.max_epochs=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 130
    assert done.stderr.strip() == "interrupted before training started; nothing was kept"
    assert not (tmp_path / "outputs").exists()


def test_a_full_disk_is_one_sentence(tmp_path: Path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(disk)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        done = cli(["experiment=thermometer", f"hydra.run.dir={disk / 'run'}"], tmp_path)
        one_sentence(done, "no space left on the device", f"resume={disk / 'run'}")
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_met_by_a_writer_thread_leaves_the_sentence_to_the_main_thread():
    """TensorBoard writes events from a thread of its own: when that thread meets the full disk
    first, its traceback would be printed besides the main thread's one sentence."""
    import errno
    import threading

    from experiments.cli import quiet_full_disk_in_threads

    def fail(error: BaseException) -> None:
        def run() -> None:
            raise error

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()

    before = threading.excepthook
    printed: list[BaseException | None] = []  # what the process's own hook would print
    try:
        threading.excepthook = lambda args: printed.append(args.exc_value)
        quiet_full_disk_in_threads()
        fail(OSError(errno.ENOSPC, "No space left on device"))
        assert printed == []
        fail(ValueError("something else"))
        assert [type(e) for e in printed] == [ValueError]
    finally:
        threading.excepthook = before


# 9 and 10. resume= takes a sweep job's directory; a CSV log keeps its history.
def test_a_sweep_job_directory_resumes_by_its_name_and_keeps_its_csv_history(tmp_path: Path):
    sweep = tmp_path / "sweep"
    assert (
        cli(
            ["-m", *SHORT, "logger=csv", "optimizer.lr=0.01,0.02", f"hydra.sweep.dir={sweep}"],
            tmp_path,
        ).returncode
        == 0
    )
    job = sweep / "lr=0.01"
    earlier = read_metrics(job)
    done = cli([f"resume={job}", "trainer.max_epochs=600"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        "exists and is not empty" not in done.stdout + done.stderr
        and "sync_dist" not in done.stdout + done.stderr
    )
    record = read_metrics(job)
    assert record["status"] == "finished" and record["epochs"] == 600
    assert record["wall_time_s"] > earlier["wall_time_s"]  # both segments count
    steps = [int(row["step"]) for row in csv.DictReader((job / "metrics.csv").open())]
    assert min(steps) < 300 < max(steps)  # the rows from before the resume are still there
    assert (
        record["metrics"]["val/loss"]["best_epoch"] in (300, 600)
        and record["metrics"]["val/loss"]["final_epoch"] == 600
    )


# 11. The smaller ones.
def test_a_stale_temporary_checkpoint_is_removed_at_the_next_write(
    finished_run: Path, tmp_path: Path
):
    from experiments.callbacks.checkpoint import save_atomically

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = folder / ".last.ckpt.4194300.tmp"  # a pid no process has
    stale.write_bytes(b"x" * 1000)
    save_atomically({"state_dict": {}}, folder / "last.ckpt")
    assert not stale.exists() and (folder / "last.ckpt").is_file()


def test_the_summary_and_record_say_which_weights_are_final_and_which_were_tested(tmp_path: Path):
    result = train_in_process(["experiment=thermometer_split"], tmp_path)
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert result["best_parameters"] == {
        "weight": best["linear.weight"].item(),
        "bias": best["linear.bias"].item(),
    }
    # held-out readings: the best is not the last
    assert result["parameters"] != result["best_parameters"]


def test_hparams_sessions_say_how_a_run_ended_and_keep_override_types(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    def session(run_dir: Path) -> tuple[int, dict]:
        accumulator = EventAccumulator(str(run_dir))
        accumulator.Reload()
        data = [
            plugin_data_pb2.HParamsPluginData.FromString(d)
            for d in accumulator.PluginTagToContent("hparams").values()
        ]
        end = next(d.session_end_info for d in data if d.HasField("session_end_info"))
        start = next(d.session_start_info for d in data if d.HasField("session_start_info"))
        return end.status, dict(start.hparams)

    status, _ = session(
        Path(
            train_in_process(
                ["experiment=thermometer", "data.input_scale=null"], tmp_path / "diverged"
            )["run_dir"]
        )
    )
    assert status == api_pb2.Status.Value("STATUS_FAILURE")
    status, hparams = session(
        Path(
            train_in_process(
                ["trainer.max_epochs=4", "trainer.check_val_every_n_epoch=2"], tmp_path / "finished"
            )["run_dir"]
        )
    )
    assert status == api_pb2.Status.Value("STATUS_SUCCESS")
    # a number, not the text '2'
    assert hparams["trainer.check_val_every_n_epoch"].number_value == 2


def test_a_typo_is_refused_before_torch_is_imported(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "experiments.train", "optimizer.lr=-1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "optimizer.lr must be a positive number" in done.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "hydra" in imported and "torch" not in imported and "lightning" not in imported


def test_the_quick_benchmark_never_replaces_the_published_tables():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import run as benchmark

    def parsed(*argv: str):
        return type(
            "Args",
            (),
            {
                "out": None,
                "quick": "--quick" in argv,
                "cases": "2,3" if "--cases" in argv else benchmark.ALL_CASES,
                "devices": "auto",
                "reps": 1 if "--quick" in argv else 3,
                "skip": "",
            },
        )()

    assert benchmark.output_dir(parsed("--quick")) == benchmark.HERE / "out"
    assert benchmark.output_dir(parsed("--cases")) == benchmark.HERE / "out"
    assert benchmark.output_dir(parsed()) == benchmark.HERE
