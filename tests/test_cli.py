"""End to end through `python -m experiments.train` and `python -m experiments.evaluate`, as users run them.

Each subprocess pays Lightning's import, so one run is shared by the tests that read its results.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import cli, fake_mnist, job_dirs, only_run_dir, read_metrics


@pytest.fixture(scope="module")
def thermometer_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    cwd = tmp_path_factory.mktemp("thermometer")
    done = cli(["experiment=thermometer"], cwd)
    assert done.returncode == 0, done.stderr
    return only_run_dir(cwd), done.stdout


def test_thermometer_ends_at_the_seeds_fit(thermometer_run):
    run_dir, _ = thermometer_run
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "finished" and metrics["epochs"] == 5000
    assert metrics["parameters"]["weight"] == pytest.approx(5.367, abs=0.01)
    assert metrics["parameters"]["bias"] == pytest.approx(-17.30, abs=0.05)
    assert metrics["monitor"]["best"] == pytest.approx(
        2.9276, abs=1e-3
    )  # the tutorial's final loss


def test_a_run_directory_holds_config_events_checkpoints_and_metrics(thermometer_run):
    run_dir, _ = thermometer_run
    assert run_dir.parent.name == "runs" and run_dir.parent.parent.name == "outputs"
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (
        run_dir / ".hydra" / "overrides.yaml"
    ).is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "train.log").is_file()
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert checkpoint["epoch"] == 4999


def test_the_summary_names_the_best_metric_test_run_dir_and_tensorboard_command(thermometer_run):
    run_dir, stdout = thermometer_run
    assert "best val/loss 2.92" in stdout
    assert "test/loss 2.92" in stdout
    assert f"tensorboard --logdir outputs/runs/{run_dir.name}" in stdout


def test_progress_stays_a_few_lines_for_5000_epochs_in_ci(thermometer_run):
    _, stdout = thermometer_run
    progress = [line for line in stdout.splitlines() if "epoch " in line and "/5000" in line]
    assert 1 <= len(progress) <= 5


def test_evaluate_retests_the_run_and_reads_new_values_in_celsius(thermometer_run, tmp_path: Path):
    run_dir, _ = thermometer_run
    done = cli([f"run={run_dir}", "inputs=[35.7,81.9]"], tmp_path, module="experiments.evaluate")
    assert done.returncode == 0, done.stderr
    assert "test/loss 2.92" in done.stdout
    w, b = 5.36708, -17.3012
    assert f"35.7 -> {w * 3.57 + b:.3f}"[:-1] in done.stdout  # 1.859
    assert f"81.9 -> {w * 8.19 + b:.2f}"[:-1] in done.stdout  # 26.66
    assert not list(tmp_path.glob("*.log")) and not (tmp_path / "outputs").exists()


def test_evaluate_a_missing_run_is_one_sentence(tmp_path: Path):
    done = cli(["run=nowhere"], tmp_path, module="experiments.evaluate")
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == "error: run=nowhere does not exist; pass a run directory under outputs/ or a .ckpt file."
    )


def test_thermometer_with_adam_on_raw_readings(tmp_path: Path):
    done = cli(["experiment=thermometer_adam"], tmp_path)
    assert done.returncode == 0, done.stderr
    parameters = read_metrics(only_run_dir(tmp_path))["parameters"]
    assert parameters["weight"] == pytest.approx(0.5368, abs=0.001)
    assert parameters["bias"] == pytest.approx(-17.30, abs=0.05)


def test_linear_2x1_ends_near_w2_b1_from_another_directory(tmp_path: Path):
    done = cli(["experiment=linear_2x1"], tmp_path)
    assert done.returncode == 0, done.stderr
    parameters = read_metrics(only_run_dir(tmp_path))["parameters"]
    assert parameters["weight"] == pytest.approx(2.0, abs=0.01)
    assert parameters["bias"] == pytest.approx(1.0, abs=0.05)


def test_multirun_over_two_learning_rates_runs_both_jobs(tmp_path: Path):
    done = cli(
        ["-m", "experiment=thermometer", "trainer.max_epochs=100", "optimizer.lr=0.001,0.01"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    sweeps = list((tmp_path / "outputs" / "sweeps").iterdir())
    assert len(sweeps) == 1
    jobs = [p.name for p in job_dirs(sweeps[0])]
    assert jobs == ["lr=0.001", "lr=0.01"]  # what varies between the jobs
    losses = {job: read_metrics(sweeps[0] / job)["metrics"]["train/loss"]["final"] for job in jobs}
    assert losses[jobs[1]] < losses[jobs[0]]  # the larger step gets further in 100 epochs


def test_mnist_experiment_on_small_idx_files(tmp_path: Path):
    root = fake_mnist(tmp_path / "digits", gz=False)
    done = cli(
        [
            "experiment=mnist",
            f"data.root={root}",
            "data.val_size=40",
            "trainer.max_epochs=3",
            "data.batch_size=32",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    metrics = read_metrics(only_run_dir(tmp_path))
    assert metrics["test"]["test/acc"] > 0.8
    assert metrics["monitor"]["name"] == "val/acc"


def test_help_lists_the_groups_and_cfg_job_shows_overrides_without_running(tmp_path: Path):
    done = cli(["--help"], tmp_path)
    assert done.returncode == 0
    for group in (
        "optimizer: adagrad, adam, adamw, momentum, rmsprop, sgd",
        "experiment:",
        "trainer: cpu, ddp, ddp_cpu, default, gpu, gpu_per_job",
        "logger: csv, mlflow, none, tensorboard",
    ):
        assert group in done.stdout
    done = cli(["--cfg", "job", "optimizer=adam", "optimizer.lr=0.1"], tmp_path)
    assert done.returncode == 0
    assert "_target_: torch.optim.Adam" in done.stdout and "lr: 0.1" in done.stdout
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["optimizer.lr=-1"], "error: optimizer.lr must be a positive number, got -1."),
        (["model=mlp", "data=thermometer"], "error: model=mlp needs image classification data"),
        (
            ["trainer.accelerator=gpu"]
            if not torch.cuda.is_available()
            else ["trainer.accelerator=mps"],
            "use trainer=cpu",
        ),
    ],
)
def test_a_bad_value_exits_non_zero_with_one_line_and_leaves_no_run(
    args: list[str], message: str, tmp_path: Path
):
    done = cli(args, tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith(message) or message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()  # no run, nor the folders made for it


def test_an_unknown_option_lists_the_valid_ones(tmp_path: Path):
    done = cli(["optimizer=adamm"], tmp_path)
    assert done.returncode == 1
    assert "Could not find 'optimizer/adamm'" in done.stderr and "rmsprop" in done.stderr


def test_m_anywhere_on_the_line_sweeps_and_a_group_outside_the_defaults_says_to_add_it(
    tmp_path: Path,
):
    done = cli(
        ["experiment=thermometer", "optimizer.lr=0.01,0.02", "-m", "trainer.max_epochs=2"], tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "2 jobs: 2 finished" in done.stdout
    (tmp_path / "my_conf" / "extra").mkdir(parents=True)
    (tmp_path / "my_conf" / "extra" / "one.yaml").write_text("a: 1\n")
    done = cli(["hydra.searchpath=[file://my_conf]", "extra=one"], tmp_path)
    assert done.returncode == 1 and done.stderr == (
        "error: extra=one picks an option of the config group extra, which this config's defaults "
        "list does not include; add the group with a plus: +extra=one.\n"
    )
    assert (
        cli(
            ["hydra.searchpath=[file://my_conf]", "+extra=one", "--cfg", "job"], tmp_path
        ).returncode
        == 0
    )
