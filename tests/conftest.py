"""Shared helpers: compose configs in-process, run the real CLI, write small IDX files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

# One thread per test process, set before torch is imported (and inherited by the processes tests
# start): two xdist workers on two cores each starting torch's two OpenMP threads spin against one
# another; measured on test_sweeps, test_cli and test_reliability: 163 s -> 129 s. The models are
# too small for a second thread to pay.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.core.config import CONF_DIR, register_resolvers
from experiments.data.idx_files import FILES, write_fake_set

register_resolvers()  # as the entry points do

IDX_NAMES = {
    (split, kind): FILES[f"{split}_{kind}"]
    for split in ("train", "test")
    for kind in ("images", "labels")
}


def compose_train(overrides: list[str], run_dir: Path, config_name: str = "train") -> DictConfig:
    """The config `python -m experiments.train OVERRIDES` would run, writing into run_dir."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name, overrides=[*overrides, f"run_dir={run_dir}"], return_hydra_config=True
        )
    HydraConfig.instance().set_config(cfg)
    return cfg


def train_in_process(overrides: list[str], run_dir: Path) -> dict:
    """What `python -m experiments.train OVERRIDES` does, in this process, writing into run_dir."""
    from experiments.run import train_and_test
    from experiments.train import run_info

    cfg = compose_train(overrides, run_dir)
    return train_and_test(cfg, run_info(cfg))


# Commands whose own process matters: Lightning's DDP runs the command line again in each of its
# processes, and Slurm's jobs run on the cluster. The parallel and submitit_local launchers start
# their workers from this process as they would from a command line's.
OWN_PROCESS = (
    "trainer=ddp",
    "strategy=ddp",
    "hydra/launcher=slurm",
)


def population(jobs: list[list[str]], tmp_path: Path, fail_fast: bool = False) -> list[dict]:
    """What the vectorized launcher does with these jobs, in this process."""
    from omegaconf import OmegaConf

    from experiments.core.state import RunInfo
    from experiments.population.group import Job, train_group

    prepared = []
    for i, overrides in enumerate(jobs):
        run_dir = tmp_path / f"job{i}"
        run_dir.mkdir(parents=True)
        cfg = compose_train(overrides, run_dir)
        info = RunInfo.from_hydra(run_dir)
        info.multirun = True
        task = OmegaConf.create(
            {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
        )
        task.run_dir = str(run_dir)
        prepared.append(Job(task, info))
    return train_group(prepared, fail_fast)


def cli(
    args: list[str],
    cwd: Path,
    timeout: float = 300,
    env: dict | None = None,
    module: str = "experiments.train",
    process: bool = False,
) -> subprocess.CompletedProcess:
    """`python -m experiments.train ARGS` as a user runs it, with CI=true: its exit code, stdout and
    stderr. In this process (experiments.cli.main: the command line's own path, its sentence and
    exit code, the caller's process given back as it was), so a test does not pay a fresh
    process's imports; in a process of its own with process=True, or for the commands that need
    one (OWN_PROCESS)."""
    full_env = {"CI": "true", "XDG_CACHE_HOME": str(cwd / ".cache"), **(env or {})}
    if process or env or any(a.replace(" ", "").startswith(OWN_PROCESS) for a in args):
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env={**os.environ, **full_env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    return cli_in_process(args, cwd, full_env, module)


def cli_in_process(
    args: list[str], cwd: Path, env: dict[str, str], module: str
) -> subprocess.CompletedProcess:
    import contextlib
    import importlib
    import io

    from experiments.cli import main

    entry = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    environ, where = dict(os.environ), os.getcwd()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(entry, module.rsplit(".", 1)[1], list(args))
    finally:
        os.chdir(where)
        os.environ.clear()
        os.environ.update(environ)
    return subprocess.CompletedProcess(
        [sys.executable, "-m", module, *args], code, out.getvalue(), err.getvalue()
    )


def terminate_at_epoch(args: list[str], cwd: Path, epoch: int) -> int:
    """Start `python -m experiments.train ARGS` for real, SIGTERM it once its progress line shows
    `epoch` (args set a max_epochs and a frequent plain progress line); its exit code."""
    env = {**os.environ, "CI": "true", "XDG_CACHE_HOME": str(cwd / ".cache")}
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:
        if (match := re.search(r"epoch (\d+)/\d+", line)) and int(match[1]) >= epoch:
            process.send_signal(signal.SIGTERM)
            break
    process.stdout.read()
    return process.wait(timeout=60)


def only_run_dir(cwd: Path) -> Path:
    runs = sorted((cwd / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def job_dirs(sweep: Path) -> list[Path]:
    """A sweep's jobs: the folders under it holding a metrics.json, in name order."""
    return sorted(p.parent for p in sweep.glob("**/metrics.json"))


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def scalar_history(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar a run logged as it trained, as TensorBoard's own reader reads its event files:
    tag -> (step, value). (The HParams `best/*` values are left out: a run resumed writes them
    again when it ends, and the HParams tab shows the last.) Points are in step order: the reader
    takes a run's files in name order, and a file opened for the test phase in the same second
    as the fit's can sort first (`...<pid>.10` before `...<pid>.9`)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: sorted(((e.step, e.value) for e in events.Scalars(tag)), key=lambda point: point[0])
        for tag in events.Tags()["scalars"]
        if not tag.startswith("best/")
    }


def fake_mnist(
    folder: Path, n_train: int = 300, n_test: int = 60, gz: bool = True, seed: int = 0
) -> Path:
    return write_fake_set(folder, n_train, n_test, gz, seed)


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    """Gzipped files flat in one folder, as Debian's dataset packages install them."""
    return fake_mnist(tmp_path / "mnist")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ".cache"))


# Module-scoped fixtures that train: the tests using one run on one xdist worker (--dist loadgroup
# in pyproject.toml), so each trains once a session instead of once per worker.
TRAINED_ONCE = (
    "thermometer_run",
    "finished_run",
    "digits_run",
    "uninterrupted",
    "optimizer_sweep",
    "seed_sweep",
    "comparison",
    "thermometer_events",
    "thermometer_sweep",
    "vectorized_cli",
    "measured_thermometer",
    "mlp_sweep",
    "slurm",  # the tests' one-node Slurm cluster
    "time_limited",  # a Slurm job: with the cluster's tests, which list "slurm" first
    "straight",  # the Slurm tests' uninterrupted run
    "digits",  # last: the group of a test using two is the first listed
)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group the tests of a fixture that trains; then put the slow tests (and whole groups holding
    one) first, so that the two workers end together on short tests instead of one waiting for
    the other's long one."""
    keys: dict[str, str] = {}
    slow: dict[str, bool] = {}
    for item in items:
        used = [name for name in TRAINED_ONCE if name in getattr(item, "fixturenames", ())]
        if used:
            item.add_marker(pytest.mark.xdist_group(used[0]))
        keys[item.nodeid] = key = f"{item.path}::{used[0]}" if used else item.nodeid
        slow[key] = slow.get(key, False) or item.get_closest_marker("slow") is not None
    items.sort(key=lambda item: not slow[keys[item.nodeid]])


SCIPY = "scipy==1.17.1"  # the reference for a comparison's statistics, never a dependency
REFERENCE = Path(__file__).parent / ".reference"


def scipy_reference(pairs: list[tuple[list[float], list[float]]]) -> list[dict]:
    """scipy's Welch p and interval and Mann-Whitney U for each pair (tests/scipy_reference.py),
    from a process with scipy installed under tests/.reference: installed there from PyPI the first
    time (a lock keeps the two workers from installing it twice), and never on the path of the
    package's own processes."""
    import fcntl

    REFERENCE.mkdir(exist_ok=True)
    with open(REFERENCE.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (REFERENCE / "scipy").is_dir():
            installed = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--no-deps",
                    "--target",
                    str(REFERENCE),
                    SCIPY,
                ],
                capture_output=True,
                text=True,
            )
            if installed.returncode != 0:  # offline: the one check that needs PyPI
                pytest.skip(
                    f"{SCIPY}, the reference, could not be installed from PyPI into {REFERENCE}"
                )
    done = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "scipy_reference.py")],
        input=json.dumps({"pairs": pairs}),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REFERENCE)},
        check=True,
    )
    return json.loads(done.stdout)["pairs"]
