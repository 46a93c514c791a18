"""Beyond one process: Lightning's DDP with two CPU processes, sweeps of DDP jobs, the SLURM preset,
the submitit launcher's local executor, and sweep jobs that resume when run again (a requeue)."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from conftest import (
    cli,
    cli_in_process,
    compose_train,
    fake_mnist,
    job_dirs,
    only_run_dir,
    read_metrics,
    terminate_at_epoch,
    train_in_process,
)
from experiments.core.config import UserError, gpu_for_job
from experiments.data.mnist import MNISTDataModule
from experiments.data.thermometer import ThermometerDataModule
from experiments.models.linear import LinearRegression
from experiments.models.mlp import MLPClassifier


def test_a_run_outside_slurm_says_nothing_about_srun_and_one_in_a_slurm_job_still_warns(
    tmp_path: Path,
):
    """Lightning warns whenever `srun` is on PATH but did not start the process: noise on a login
    node, where users train small runs all day, but a useful hint inside a Slurm job."""
    path = os.environ["PATH"]
    if shutil.which("srun") is None:  # Lightning looks for the name on PATH, nothing more
        stand_in = tmp_path / "bin" / "srun"
        stand_in.parent.mkdir()
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)
        path = f"{stand_in.parent}{os.pathsep}{path}"
    short = ["trainer.max_epochs=1"]
    said = {}
    for where, env in (("login", {}), ("job", {"SLURM_JOB_ID": "7"})):
        (tmp_path / where).mkdir()
        with warnings.catch_warnings(record=True) as caught:  # pytest records, not the console
            warnings.simplefilter("always")
            done = cli_in_process(
                short, tmp_path / where, {"CI": "true", "PATH": path, **env}, "experiments.train"
            )
        assert done.returncode == 0, done.stderr
        said[where] = [str(w.message) for w in caught if "srun" in str(w.message)]
    assert said["login"] == []
    assert said["job"] and all("The `srun` command is available" in w for w in said["job"])


def event_file_pids(run_dir: Path) -> set[str]:
    return {p.name.split(".")[-2] for p in run_dir.glob("events.out.tfevents.*")}


@pytest.mark.slow  # DDP: processes of its own
def test_ddp_on_two_cpu_processes_keeps_one_run_directory_and_synced_metrics(tmp_path: Path):
    done = cli(
        [
            "experiment=thermometer",
            "trainer=ddp_cpu",
            "trainer.max_epochs=60",
            "trainer.check_val_every_n_epoch=20",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)  # the second process used the first one's directory
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert len(event_file_pids(run_dir)) == 1  # TensorBoard files come from rank 0 only
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "finished" and metrics["steps"] == 60
    assert done.stdout.count("Finished in") == 1  # one summary, from rank 0
    # The validation loss DDP logged equals what one process computes with the same weights.
    model = LinearRegression()
    model.load_state_dict(
        torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    )
    data = ThermometerDataModule(fit_all_readings=True)
    data.setup()
    x, y = data.splits["val"]
    with torch.no_grad():
        single = model.loss(model(x), y).item()
    assert metrics["metrics"]["val/loss"]["final"] == pytest.approx(single, rel=1e-5)


@pytest.mark.slow  # DDP: processes of its own
def test_ddp_splits_each_epoch_across_processes_and_syncs_test_accuracy(tmp_path: Path):
    root = fake_mnist(tmp_path / "digits")
    done = cli(
        [
            "experiment=mnist",
            f"data.root={root}",
            "data.val_size=40",
            "data.batch_size=16",
            "trainer.max_epochs=2",
            "trainer=ddp_cpu",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    metrics = read_metrics(run_dir)
    # 260 training images, 130 per process: ceil(130 / 16) = 9 steps an epoch, not the 17 of one process
    assert metrics["steps"] == 2 * 9
    # Test accuracy gathered over both processes' halves of the test set equals one process's count.
    checkpoint = torch.load(metrics["checkpoints"]["best"], weights_only=True)
    model = MLPClassifier()
    model.load_state_dict(checkpoint["state_dict"])
    data = MNISTDataModule(
        root=str(root), val_size=40, download=False, cache_dir=str(tmp_path / ".cache")
    )
    data.setup()
    x, y = data.splits["test"]
    with torch.no_grad():
        single = (model(x).argmax(1) == y).float().mean().item()
    assert metrics["test"]["test/acc"] == pytest.approx(single, abs=1e-6)


@pytest.mark.slow  # DDP: processes of its own
def test_a_sweep_of_ddp_jobs_runs_each_job_once_in_its_own_directory(tmp_path: Path):
    done = cli(
        [
            "-m",
            "experiment=thermometer",
            "trainer=ddp_cpu",
            "trainer.max_epochs=50",
            "optimizer.lr=0.001,0.01",
        ],
        tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "sweeps").iterdir())
    assert len(sweeps) == 1 and not (tmp_path / "outputs" / "runs").exists()
    jobs = job_dirs(sweeps[0])
    assert [p.name for p in jobs] == ["lr=0.001", "lr=0.01"]
    for job in jobs:
        assert read_metrics(job)["status"] == "finished" and read_metrics(job)["steps"] == 50
        assert (job / "train_ddp_process_1.log").is_file() and len(event_file_pids(job)) == 1
    assert "2 jobs: 2 finished" in done.stdout


def test_the_slurm_preset_composes_with_the_usual_settings(tmp_path: Path):
    cfg = compose_train(
        ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2"],
        tmp_path,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.experiments_plugins.slurm_launcher.SlurmLauncher"
    assert (
        launcher.partition,
        launcher.gpus_per_node,
        launcher.timeout_min,
        launcher.cpus_per_task,
    ) == ("gpu", 2, 60, 4)
    assert launcher.max_num_timeout == 3 and launcher.signal_delay_s == 120


def test_a_population_slurm_runs_again_does_not_train_again_the_jobs_that_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """When Slurm requeues a population's job (preempted, or at its time limit), submitit runs the
    population again from its start: a member that ended for good (finished, diverged) keeps its
    record and returns what it says, and nothing is trained again. A sweep submitted again into
    a folder whose noted Slurm jobs squeue cannot report on submits nothing and says why."""
    from types import SimpleNamespace

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from experiments.core.config import CONF_DIR
    from hydra_plugins.experiments_plugins.slurm_launcher import SlurmLauncher

    args = ["experiment=thermometer", "trainer.max_epochs=30", "optimizer.lr=0.01,1e6"]
    done = cli(["-m", "hydra/launcher=vectorized", *args], tmp_path)
    assert done.returncode == 0, done.stderr
    (folder,) = (tmp_path / "outputs" / "sweeps").iterdir()
    jobs = job_dirs(folder)
    records = [read_metrics(job) for job in jobs]
    assert sorted(r["status"] for r in records) == ["diverged", "finished"]
    written = [(job / "metrics.json").stat().st_mtime_ns for job in jobs]
    hydra = [OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra for job in jobs]
    # what the sweeper hands its launcher: the job's overrides and its folder's name
    overrides = [
        [*h.overrides.task, *(o for o in h.overrides.hydra if o.startswith("hydra.sweep.subdir="))]
        for h in hydra
    ]
    nums = [int(h.job.num) for h in hydra]

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="train"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(
            "train",
            [
                "hydra/launcher=slurm",
                "hydra.launcher.populations=true",
                f"hydra.sweep.dir={folder}",
                *args,
            ],
            run_mode=RunMode.MULTIRUN,
        )
        params = OmegaConf.to_container(master.hydra.launcher)
        params.pop("_target_")
        launcher = SlurmLauncher(**params)
        context = SimpleNamespace(config_loader=loader)  # nothing to train: no Hydra callbacks
        launcher.setup(hydra_context=context, task_function=None, config=master)
        returns = launcher.train_part(overrides, nums, Singleton.get_state())
        assert [r.return_value for r in returns] == [r["monitor"].get("best") for r in records]
        assert [(job / "metrics.json").stat().st_mtime_ns for job in jobs] == written

        (folder / "slurm_jobs.json").write_text(
            '{"jobs": [{"slurm_job": "7", "num": 0, "dir": "x"}]}'
        )
        squeue = tmp_path / "bin" / "squeue"  # a login node whose controller stopped answering
        squeue.parent.mkdir()
        squeue.write_text(
            "#!/bin/sh\necho 'squeue: error: Unable to contact slurm controller' >&2\nexit 1\n"
        )
        squeue.chmod(0o755)
        monkeypatch.setenv("PATH", f"{squeue.parent}{os.pathsep}{os.environ['PATH']}")
        with pytest.raises(UserError) as refused:
            launcher.still_queued([[0], [1]], overrides, nums)
    sentence = (
        f"squeue did not answer, so which of the Slurm jobs noted in {folder / 'slurm_jobs.json'} "
        "still run is unknown and nothing was submitted; run the sweep again once squeue answers, "
        f"or collect it with `python -m experiments.collect {folder}`."
    )
    assert str(refused.value) == sentence
    # the command itself refuses before the sweep writes a file (sinfo answers: Slurm is there)
    for name in ("sbatch", "srun", "sinfo"):
        (squeue.parent / name).write_text("#!/bin/sh\nexit 0\n")
        (squeue.parent / name).chmod(0o755)
    before = {f: f.read_bytes() for f in folder.rglob("*") if f.is_file()}
    done = cli(["-m", "hydra/launcher=slurm", f"hydra.sweep.dir={folder}", *args], tmp_path)
    assert done.returncode == 1 and done.stderr == f"error: {sentence}\n"
    assert {f: f.read_bytes() for f in folder.rglob("*") if f.is_file()} == before


def test_cfg_hydra_shows_the_slurm_launcher_settings(tmp_path: Path):
    done = cli(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra"], tmp_path)
    assert done.returncode == 0, done.stderr
    for line in (
        "SlurmLauncher",
        "partition: gpu",
        "gpus_per_node: 1",
        "cpus_per_task: 4",
        "timeout_min: 60",
        "array_parallelism: 64",
    ):
        assert line in done.stdout


@pytest.mark.slow  # submitit: a process per job
def test_submitit_local_executor_runs_a_two_job_sweep(tmp_path: Path):
    done = cli(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "experiment=thermometer",
            "trainer.max_epochs=50",
            "optimizer.lr=0.001,0.01",
        ],
        tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    jobs = job_dirs(sweep)
    assert len(jobs) == 2 and all(read_metrics(job)["status"] == "finished" for job in jobs)
    assert (sweep / ".submitit").is_dir() and (sweep / "summary.csv").is_file()


@pytest.mark.slow  # submitit: a process per job
def test_a_sweep_job_run_again_after_preemption_resumes_from_its_checkpoint(tmp_path: Path):
    """What a SLURM requeue does: the same job, in the same directory, after a SIGTERM."""
    args = [
        "-m",
        "experiment=thermometer",
        "trainer.max_epochs=1000",
        "trainer.check_val_every_n_epoch=100",
        "optimizer.lr=0.01",
        "callbacks.progress.plain_every_seconds=0.05",
    ]
    assert terminate_at_epoch(args, tmp_path, 300) == 143
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    (job,) = job_dirs(sweep)
    stopped = read_metrics(job)
    assert stopped["status"] == "interrupted" and 300 <= stopped["steps"] < 1000

    done = cli([*args, f'hydra.sweep.dir="{sweep}"'], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    finished = read_metrics(job)
    assert finished["status"] == "finished" and finished["steps"] == 1000
    straight = train_in_process(
        [
            "experiment=thermometer",
            "trainer.max_epochs=1000",
            "trainer.check_val_every_n_epoch=100",
            "optimizer.lr=0.01",
        ],
        tmp_path / "straight",
    )
    assert finished["parameters"] == straight["parameters"]  # exactly where an unstopped job ends
    assert finished["metrics"]["val/loss"]["best_epoch"] == 1000


def test_gpu_per_job_gives_side_by_side_sweep_jobs_different_gpus(tmp_path: Path):
    assert [gpu_for_job(num, gpu_count=4) for num in range(6)] == [[0], [1], [2], [3], [0], [1]]
    assert gpu_for_job(3, gpu_count=0) == [0]  # no GPU: the accelerator check then says so
    cfg = compose_train(["trainer=gpu_per_job"], tmp_path)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == [0]  # a single run: job 0
