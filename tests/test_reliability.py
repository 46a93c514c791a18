"""Nothing lost: interruption and exact resume, atomic checkpoints, reproducible runs, checkpoints
that are data and never code."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import cli, fake_mnist, only_run_dir, read_metrics, scalar_history, train_in_process

# Mini-batches with shuffling, Adam's state, validation: all of what a resume must restore.
EPOCHS = 30  # of 33 steps each
KILLABLE = [
    "experiment=mnist",
    "data.val_size=40",
    "data.batch_size=8",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.deterministic=true",
    "callbacks.progress.plain_every_seconds=0.05",
]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_mnist(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def uninterrupted(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    done = cli([*KILLABLE, f"data.root={digits}"], cwd)
    assert done.returncode == 0, done.stderr
    return only_run_dir(cwd)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_run_killed_at_a_random_step_resumes_to_the_same_weights(
    signum: int, digits: Path, uninterrupted: Path, tmp_path: Path
):
    env = {**os.environ, "CI": "true", "XDG_CACHE_HOME": str(tmp_path / ".cache")}
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *KILLABLE, f"data.root={digits}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    target = random.randint(40, EPOCHS * 33 - 300)  # room to stop before the end
    for line in process.stdout:
        if (match := re.search(rf"epoch (\d+)/{EPOCHS} · step (\d+)/33", line)) and (
            int(match[1]) - 1
        ) * 33 + int(match[2]) >= target:
            process.send_signal(signum)
            break
    else:
        pytest.fail("the run ended before it could be interrupted")
    output = process.stdout.read()
    assert process.wait(timeout=30) == 128 + signum
    run_dir = only_run_dir(tmp_path)
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "interrupted" and metrics["reason"].startswith(
        f"interrupted by {signal.Signals(signum).name}"
    )
    assert 0 < metrics["steps"] < EPOCHS * 33 and "Interrupted" in output
    assert (
        torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        == metrics["steps"]
    )

    done = cli([f"resume={run_dir}"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert only_run_dir(tmp_path) == run_dir  # the same directory, so the same TensorBoard run
    resumed, straight = weights(run_dir), weights(uninterrupted)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    final = read_metrics(run_dir)
    assert final["status"] == "finished" and final["steps"] == EPOCHS * 33
    assert final["metrics"] == read_metrics(uninterrupted)["metrics"]
    # every logged value at its step, the interrupted epoch's included
    assert scalar_history(run_dir) == scalar_history(uninterrupted)
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == (
        uninterrupted / ".hydra" / "overrides.yaml"
    ).read_text()


def test_a_fit_gives_the_signal_handlers_back_when_it_ends(tmp_path: Path):
    """While it trains, Ctrl-C and SIGTERM stop at a step boundary; afterwards the process's own
    handlers are back (Lightning restores its originals before a callback's teardown runs, so a
    handler put back there would leave Lightning's installed for good)."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    short = [
        "experiment=thermometer",
        "trainer.max_epochs=20",
        "trainer.check_val_every_n_epoch=10",
    ]
    assert train_in_process(short, tmp_path / "run")["status"] == "finished"
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers


@pytest.mark.parametrize("where", ["submitit's Slurm job", "a bare Slurm job", "no Slurm job"])
def test_a_slurm_time_limit_notice_is_handled_at_a_step_boundary_once_the_run_is_recorded(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """In a Slurm job, submitit's handler of SIGUSR2 (its notice before the time limit) requeues
    the job and exits at once, in the middle of a step. A fit holds it back: training stops at the
    next step boundary with its last.ckpt, the run is recorded, and the job then runs the handler
    (core.signals.deliver_held, called by train.main). In a Slurm job where no handler takes the
    notice (a plain sbatch script), which SIGUSR2 would end, the run stops the same way. Outside Slurm the handler runs as it comes."""
    from experiments.core import signals
    from experiments.core.signals import deliver_held

    monkeypatch.setattr(signals, "_held", [])  # nothing another test left held
    run_dir = tmp_path / "run"
    seen: list[tuple[str, int]] = []

    def submitit(signum: int, frame: object) -> None:
        last = run_dir / "checkpoints" / "last.ckpt"
        step = torch.load(last, weights_only=True)["global_step"] if last.is_file() else -1
        seen.append((read_metrics(run_dir)["status"], step))

    if where == "no Slurm job":
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    else:
        monkeypatch.setenv("SLURM_JOB_ID", "7")
    handler = signal.SIG_DFL if where == "a bare Slurm job" else submitit
    previous = signal.signal(signal.SIGUSR2, handler)
    try:
        notice = [
            "+callbacks.notice._target_=pace.SignalAt",
            "+callbacks.notice.step=7",
            f"+callbacks.notice.signum={int(signal.SIGUSR2)}",
        ]
        result = train_in_process(
            ["experiment=thermometer", "trainer.max_epochs=20", *notice], run_dir
        )
        assert signal.getsignal(signal.SIGUSR2) is handler  # given back
        if where == "no Slurm job":
            assert result["status"] == "finished" and result["steps"] == 20
            assert seen == [("running", -1)]  # at once, in the middle of training
        else:
            assert result["status"] == "interrupted" and result["steps"] == 7
            assert result["reason"].startswith("interrupted by Slurm's notice of the time limit")
            assert (
                torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
                == 7
            )
            assert seen == []  # held until the job is recorded
            deliver_held()
            assert seen == ([("interrupted", 7)] if handler is submitit else [])
            deliver_held()  # once
            assert len(seen) == (1 if handler is submitit else 0)
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.parametrize("validating", [True, False])
def test_a_signal_during_a_validation_stops_training_after_it_and_resumes_exactly(
    validating: bool, digits: Path, uninterrupted: Path, tmp_path: Path
):
    """Lightning stops a validation in its middle at SIGTERM, where no last.ckpt is written: a
    signal there (Ctrl-C here), or in the training step just before it, waits for the
    validation's end and stops training at the step boundary that follows, with its last.ckpt,
    from which the run resumes exactly."""
    notice = [
        "+callbacks.notice._target_=pace.SignalAt",
        "+callbacks.notice.step=99",  # the third epoch's last step, or its validation's 2nd batch
        f"+callbacks.notice.signum={int(signal.SIGINT)}",
        f"+callbacks.notice.validating={str(validating).lower()}",
        "data.eval_batch_size=8",  # five validation batches (the weights do not change)
    ]
    done = cli([*KILLABLE, f"data.root={digits}", *notice], tmp_path)
    assert done.returncode == 130, done.stderr
    stopped = read_metrics(run_dir := only_run_dir(tmp_path))
    assert stopped["status"] == "interrupted" and stopped["steps"] == 99
    assert stopped["reason"].startswith("interrupted by SIGINT")
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 99

    done = cli([f"resume={run_dir}"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert read_metrics(run_dir)["status"] == "finished"
    resumed, straight = weights(run_dir), weights(uninterrupted)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_resume_refuses_a_directory_that_is_not_a_run(tmp_path: Path):
    done = cli([f"resume={tmp_path}"], tmp_path)
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == f"error: resume={tmp_path} is not a run directory written by experiments.train (no .hydra/overrides.yaml); pass one under outputs/runs/."
    )
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing written into it


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_intact(tmp_path: Path):
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from experiments.callbacks.checkpoint import AtomicCheckpointIO
        io = AtomicCheckpointIO()
        io.save_checkpoint({{"state_dict": {{"w": torch.ones(1000)}}}}, "{tmp_path}/last.ckpt")
        def dying_save(obj, f):
            f.write(b"half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        io.save_checkpoint({{"state_dict": {{"w": torch.zeros(1000)}}}}, "{tmp_path}/last.ckpt")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL
    survivor = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert torch.equal(survivor["state_dict"]["w"], torch.ones(1000))


def test_the_same_seed_gives_identical_metrics_and_weights(tmp_path: Path, mnist_root: Path):
    overrides = [
        "experiment=mnist",
        f"data.root={mnist_root}",
        "data.val_size=40",
        "data.batch_size=16",
        "trainer.max_epochs=3",
        "trainer.deterministic=true",
    ]
    first = train_in_process(overrides, tmp_path / "a")
    second = train_in_process(overrides, tmp_path / "b")
    assert first["metrics"] == second["metrics"] and first["test"] == second["test"]
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train_in_process([*overrides, "seed=1"], tmp_path / "c")
    assert other["metrics"] != first["metrics"]


def test_a_run_records_versions_commit_and_its_resolved_config(tmp_path: Path):
    result = train_in_process(["trainer.max_epochs=1"], tmp_path)
    versions = result["versions"]
    assert (
        result["torch_threads"] == torch.get_num_threads() >= 1
    )  # what a product's sums split over
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"].startswith(
        torch.__version__.split("+")[0]
    )
    assert versions["lightning"] and versions["hydra"] and versions["experiments"]
    import experiments

    checkout = Path(__file__).resolve().parents[1]
    if (checkout / ".git").exists() and Path(experiments.__file__).resolve().parents[2] == checkout:
        # an editable install of this checkout records its commit
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", versions["git_commit"] or "")
    else:
        assert versions["git_commit"] is None
    resolved = (tmp_path / "config.resolved.yaml").read_text()
    assert "${" not in resolved and f"run_dir: {tmp_path}" in resolved and "lr: 0.2" in resolved


def test_checkpoints_hold_only_data(tmp_path: Path):
    train_in_process(["trainer.max_epochs=2"], tmp_path)
    for path in (tmp_path / "checkpoints").glob("*.ckpt"):
        torch.load(path, weights_only=True)  # raises on anything but tensors and plain data


def test_the_package_never_loads_a_checkpoint_with_weights_only_false():
    source = Path(__file__).resolve().parents[1] / "src" / "experiments"
    offenders = [p for p in source.rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []


def test_evaluate_refuses_a_checkpoint_naming_code_outside_the_package(tmp_path: Path):
    train_in_process(["trainer.max_epochs=1"], tmp_path / "run")
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["run_config"]["data"]["_target_"] = "os.system"
    checkpoint["run_config"]["data"]["command"] = f"touch {tmp_path / 'pwned'}"
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    done = cli([f"run={tmp_path / 'evil.ckpt'}"], tmp_path, module="experiments.evaluate")
    assert done.returncode == 1
    assert (
        "names data 'os.system', which is not one of this package's TensorDataModule classes"
        in done.stderr
    )
    assert not (tmp_path / "pwned").exists()


def test_nested_targets_in_a_checkpoint_config_are_plain_values(tmp_path: Path):
    from experiments.evaluate import evaluate

    train_in_process(["trainer.max_epochs=1"], tmp_path / "run")
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["run_config"]["data"]["noise"] = {
        "_target_": "os.system",
        "command": f"touch {tmp_path / 'pwned'}",
    }
    torch.save(checkpoint, tmp_path / "nested.ckpt")
    # a dict where a number belongs: refused by the data module, never called
    with pytest.raises(TypeError):
        evaluate(str(tmp_path / "nested.ckpt"))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (
            lambda tmp: ["ckpt_path=" + str(tmp / "missing.ckpt")],
            "ckpt_path={tmp}/missing.ckpt does not exist",
        ),
        (
            lambda tmp: (
                (tmp / "notes.txt").write_text("hello") and ["ckpt_path=" + str(tmp / "notes.txt")]
            ),
            "ckpt_path={tmp}/notes.txt is not a checkpoint torch.load can read safely",
        ),
    ],
)
def test_a_bad_ckpt_path_is_one_sentence_and_leaves_other_runs_untouched(
    make_bad, message: str, tmp_path: Path
):
    earlier = train_in_process(["trainer.max_epochs=1"], tmp_path / "outputs" / "runs" / "earlier")
    before = {p: p.read_bytes() for p in Path(earlier["run_dir"]).rglob("*") if p.is_file()}
    done = cli(make_bad(tmp_path), tmp_path)
    assert done.returncode == 1
    assert (
        done.stderr.startswith("error: " + message.format(tmp=tmp_path))
        and len(done.stderr.strip().splitlines()) == 1
    )
    assert {p: p.read_bytes() for p in Path(earlier["run_dir"]).rglob("*") if p.is_file()} == before
    assert [p.name for p in (tmp_path / "outputs" / "runs").iterdir()] == ["earlier"]


def test_an_output_directory_that_cannot_be_created_is_one_sentence(tmp_path: Path):
    (tmp_path / "a_file").write_text("not a directory")
    done = cli([f"hydra.run.dir={tmp_path / 'a_file' / 'run'}", "trainer.max_epochs=1"], tmp_path)
    assert done.returncode == 1
    assert "a_file/run" in done.stderr and "cannot" in done.stderr.lower()
    assert len([line for line in done.stderr.strip().splitlines() if line.strip()]) == 1
