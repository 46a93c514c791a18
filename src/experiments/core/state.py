"""A run's state while it trains, and what it leaves in metrics.json.

One `RunState` per run directory. Lightning's hooks fill it (experiments.callbacks.recorder);
one fit may fill several, each for its own directory (hydra/launcher=vectorized). It imports
neither torch nor Lightning, so reading and writing records stays cheap.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.core.overrides import key_of

STATUSES = ("running", "finished", "pruned", "interrupted", "diverged", "failed")
# How a run ended for good: a sweep run again leaves it alone. An interrupted run continues from
# its last.ckpt and a failed one runs again.
FINAL = ("finished", "diverged", "pruned")
# Each run's record (RunState.write): its status, results and settings. read_record is its one reader.
METRICS = "metrics.json"
SLURM_JOBS = "slurm_jobs.json"  # a sweep submitted without waiting: its Slurm jobs, to collect


def exit_code(status: str, reason: str | None = None) -> int:
    """What a command exits with for a run that ended so: 0 when it finished (or its search
    pruned it), 130 or 143 when SIGINT or SIGTERM interrupted it (as a shell reports a signal),
    1 otherwise (diverged, failed, or stopped by fail_fast=true)."""
    if status in ("finished", "pruned"):
        return 0
    if status == "interrupted" and "fail_fast" not in (reason or ""):
        return 130 if "SIGINT" in (reason or "") else 143
    return 1


@dataclass
class MetricRecord:
    """Final and best value of one logged metric, with the epochs (completed) they came at."""

    higher_is_better: bool = False
    final: float | None = None
    final_epoch: int | None = None
    best: float | None = None
    best_epoch: int | None = None

    def update(self, value: float, epoch: int | None) -> None:
        self.final, self.final_epoch = value, epoch
        if math.isfinite(value) and (
            self.best is None or (value > self.best if self.higher_is_better else value < self.best)
        ):
            self.best, self.best_epoch = value, epoch

    def to_json(self) -> dict[str, Any]:
        return {
            "final": self.final,
            "final_epoch": self.final_epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "higher_is_better": self.higher_is_better,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MetricRecord:
        return cls(
            **{k: data.get(k) for k in ("final", "final_epoch", "best", "best_epoch")},
            higher_is_better=bool(data.get("higher_is_better")),
        )


@dataclass
class RunInfo:
    """Where a run lives and how it was asked for."""

    run_dir: Path
    choices: dict[str, str] = field(default_factory=dict)  # the option chosen per config group
    overrides: list[str] = field(default_factory=list)  # the command line's overrides
    multirun: bool = False
    resumed: bool = False

    @classmethod
    def from_hydra(cls, run_dir: Path, resumed: bool = False) -> RunInfo:
        """What Hydra knows of the job it runs: the option chosen per group, the command line's
        overrides, and whether it is one job of a sweep."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return cls(run_dir, resumed=resumed)
        hydra_cfg = HydraConfig.get()
        return cls(
            run_dir=run_dir,
            choices={
                k: v
                for k, v in hydra_cfg.runtime.choices.items()
                if v and not k.startswith("hydra")
            },
            overrides=[
                o
                for o in hydra_cfg.overrides.task
                if not key_of(o).startswith("hydra") and key_of(o) != "resume"
            ],
            multirun=hydra_cfg.mode == RunMode.MULTIRUN,
            resumed=resumed,
        )


@dataclass
class DynamicsRecord:
    """One instrument over a run: its first and final value with their steps, its least, its
    largest and its mean over the steps it was measured at (non-finite values counted apart)."""

    first: float | None = None
    first_step: int | None = None
    final: float | None = None
    final_step: int | None = None
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    count: int = 0
    non_finite: int = 0

    def update(self, value: float, step: int) -> None:
        if self.first is None:
            self.first, self.first_step = value, step
        self.final, self.final_step = value, step
        if not math.isfinite(value):
            self.non_finite += 1
            return
        self.count += 1
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)
        self.mean = value if self.mean is None else self.mean + (value - self.mean) / self.count

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class RunState:
    info: RunInfo
    config: dict[str, Any]  # the composed config, resolved, as plain data
    monitor: str
    monitor_mode: str
    status: str = "running"
    reason: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, MetricRecord] = field(default_factory=dict)
    epochs: int = 0
    steps: int = 0
    parameters: dict[str, Any] | None = None  # a line's final weight and bias
    best_parameters: dict[str, Any] | None = None  # those in best.ckpt, which test and evaluate use
    # (step, w, b) of a one-input line
    path: list[tuple[int, float, float]] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)  # training only, validation excluded
    fit_s: float = 0.0
    test_s: float = 0.0
    earlier_wall_s: float = 0.0  # the segments before a resume
    started: float = field(default_factory=time.perf_counter)
    population: dict[str, Any] | None = None  # set when one fit trained several runs
    # a diverged run's last finite training loss, (step, value): the last point of its curve
    last_finite_loss: tuple[int, float] | None = None
    # torch's intra-op threads: a matrix product's sums are split across them, so another count
    # rounds differently in the last bit, and a long fit can end in another third digit
    torch_threads: int | None = None
    # dynamics=...: each instrument's summary over the run (experiments.dynamics), by name
    dynamics: dict[str, DynamicsRecord] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.info.run_dir

    def log_metric(
        self, name: str, value: float, epoch: int | None, higher_is_better: bool
    ) -> None:
        self.metrics.setdefault(name, MetricRecord(higher_is_better)).update(value, epoch)

    @property
    def test(self) -> dict[str, float]:
        return {
            k: v.final
            for k, v in self.metrics.items()
            if k.startswith("test/") and v.final is not None
        }

    def end(self, status: str, reason: str | None = None) -> None:
        """The run's outcome; the first one stands (an error while recording an interruption
        does not turn it into a failure)."""
        if status not in STATUSES:
            raise ValueError(f"a run ends with one of {STATUSES}, not {status!r}")
        if self.status == "running":
            self.status, self.reason = status, reason

    def result(self) -> dict[str, Any]:
        """What metrics.json holds."""
        epochs = self.epoch_seconds
        median = median_of(epochs)
        monitor = self.metrics.get(self.monitor)
        return {
            "status": self.status,
            "reason": self.reason,
            "experiment": self.info.choices.get("experiment"),
            "overrides": self.info.overrides,
            "wall_time_s": round(self.earlier_wall_s + time.perf_counter() - self.started, 3),
            "timing": {
                "fit_s": round(self.fit_s, 3),
                "test_s": round(self.test_s, 3),
                "train_epoch_s_median": round(median, 6) if epochs else None,
                "train_epoch_s_first": round(epochs[0], 6) if epochs else None,
            },
            "epochs": self.epochs,
            "steps": self.steps,
            "monitor": {
                "name": self.monitor,
                "mode": self.monitor_mode,
                "best": monitor.best if monitor else None,
                "epoch": monitor.best_epoch if monitor else None,
            },
            "metrics": {
                k: v.to_json() for k, v in self.metrics.items() if not k.startswith("test/")
            },
            "test": self.test,
            "parameters": self.parameters,
            "best_parameters": self.best_parameters,
            "hparams": self.hparams,
            "checkpoints": checkpoint_paths(self.run_dir),
            "run_dir": str(self.run_dir),
            "population": self.population,
            "dynamics": {k: v.to_json() for k, v in self.dynamics.items()} or None,
            "versions": versions(),
            "torch_threads": self.torch_threads,
        }

    def write(self) -> dict[str, Any]:
        result = self.result()
        write_record(self.run_dir, result)
        return result

    def resume_history(self) -> None:
        """Carry on the record of the run being resumed: its metric history and earlier wall time."""
        earlier = read_record(self.run_dir) or {}
        self.metrics = {
            k: MetricRecord.from_json(v) for k, v in (earlier.get("metrics") or {}).items()
        }
        self.earlier_wall_s = float(earlier.get("wall_time_s") or 0.0)
        self.dynamics = {k: DynamicsRecord(**v) for k, v in (earlier.get("dynamics") or {}).items()}
        trajectory = read_json(self.run_dir / "trajectory.json") or {}
        self.path = list(
            zip(trajectory.get("steps", []), trajectory.get("w", []), trajectory.get("b", []))
        )


def summary_text(result: dict[str, Any]) -> str:
    """The lines printed when a run ends: how it ended, its best and test values, a line's weights,
    and where to look."""
    status = result["status"]
    head = f"{status.capitalize()} in {result['wall_time_s']:.1f} s: {result['epochs']} epochs, {result['steps']} steps."
    lines = [head if status == "finished" else f"{head} Reason: {result['reason']}."]
    monitor = result.get("monitor") or {}
    if monitor.get("best") is not None:
        lines.append(f"  best {monitor['name']} {monitor['best']:.6g} (epoch {monitor['epoch']})")
    if result.get("test"):
        lines.append("  " + ", ".join(f"{k} {v:.6g}" for k, v in result["test"].items()))

    def numbers(parameters: dict[str, Any]) -> str:
        return ", ".join(
            f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in parameters.items()
        )

    if result.get("parameters"):
        lines.append(f"  {numbers(result['parameters'])} (final)")
    best = result.get("best_parameters")
    if best and best != result.get("parameters"):
        lines.append(f"  {numbers(best)} (best.ckpt, which the test used)")
    if dynamics := result.get("dynamics"):
        lines.append(f"  {dynamics_line(dynamics)}")
    run_dir = Path(result["run_dir"])
    shown = run_dir.relative_to(Path.cwd()) if run_dir.is_relative_to(Path.cwd()) else run_dir
    lines.append(f"  run dir: {shown}")
    lines.append(f"  tensorboard --logdir {shlex.quote(str(shown))}")
    if (run_dir / MLFLOW_DB).is_file():  # logger=mlflow
        lines.append(f"  {mlflow_ui(run_dir)}")
    return "\n".join(lines)


SUMMARISED = (  # the instruments the printed summary names, when measured
    ("grad_norm", "gradient norm"),
    ("update_ratio", "update/weight"),
    ("noise_scale", "noise scale"),
    ("hessian_top_eigenvalue", "sharpness"),
    ("stability_threshold", "2/lr"),
)


def dynamics_line(dynamics: dict[str, dict[str, Any]]) -> str:
    """The instruments' last values in one line: `instruments at step 9375: gradient norm 0.41, ...`."""
    shown = [
        (label, dynamics[f"dynamics/{name}"])
        for name, label in SUMMARISED
        if f"dynamics/{name}" in dynamics
    ]
    step = shown[0][1]["final_step"] if shown else None
    values = ", ".join(
        f"{label} {record['final']:.3g}" for label, record in shown if record["final"] is not None
    )
    return f"instruments at step {step}: {values} (dynamics/ in TensorBoard, metrics.json)"


MLFLOW_DB = "mlflow.db"  # logger=mlflow's store in a run's or sweep's folder


def mlflow_ui(folder: Path) -> str:
    """The command that shows the MLflow runs stored in `folder`."""
    return (
        f"mlflow ui --backend-store-uri {shlex.quote(f'sqlite:///{folder.absolute() / MLFLOW_DB}')}"
    )


_medians: dict[int, tuple[int, float]] = {}


def median_of(values: list[float]) -> float:
    """The median of a growing list, computed once per length (the runs of a population share one)."""
    if not values:
        return math.nan
    cached = _medians.get(id(values))
    if cached is None or cached[0] != len(values):
        cached = _medians[id(values)] = (len(values), statistics.median(values))
    return cached[1]


def checkpoint_paths(run_dir: Path) -> dict[str, str]:
    folder = run_dir / "checkpoints"
    return {
        name: str(folder / f"{name}.ckpt")
        for name in ("best", "last")
        if (folder / f"{name}.ckpt").is_file()
    }


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """What a run directory's metrics.json says; None where it has none (or an unreadable one)."""
    return read_json(run_dir / METRICS)


def final_status(run_dir: Path) -> str | None:
    """The status of a run that ended for good (finished, diverged, pruned): a sweep run again
    leaves it alone. None for a run still to train (interrupted, failed, never started)."""
    status = (read_record(run_dir) or {}).get("status")
    return status if status in FINAL else None


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    write_json(run_dir / METRICS, record)


def write_atomically(path: Path, data: str | bytes, sync: bool = False) -> None:
    """Write a file whole or not at all: a reader never sees half of it, a crash never leaves
    half of it. It goes to `.NAME.PID.tmp` beside it (flushed to disk with sync=True), then is
    renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(data, indent=2, default=str) + "\n")


def failure_record(
    run_dir: Path, reason: str, choices: dict[str, str], overrides: list[str]
) -> dict[str, Any]:
    """metrics.json for a sweep job that failed before training started, so the sweep accounts for it."""
    return {
        "status": "failed",
        "reason": reason,
        "experiment": choices.get("experiment"),
        "overrides": overrides,
        "wall_time_s": 0.0,
        "epochs": 0,
        "steps": 0,
        "monitor": {},
        "metrics": {},
        "test": {},
        "parameters": None,
        "hparams": {"optimizer": choices.get("optimizer", "")},
        "run_dir": str(run_dir),
    }


@functools.cache
def versions() -> dict[str, str | None]:
    """What produced a run: this package's version and git commit, torch, Lightning and Hydra."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    source = Path(__file__).resolve().parents[3]
    commit, dirty = None, False
    if (source / ".git").exists():  # a checkout, not an installed wheel
        try:
            commit = (
                subprocess.run(
                    ["git", "rev-parse", "HEAD"],
                    cwd=source,
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout.strip()
                or None
            )
            dirty = commit is not None and bool(
                subprocess.run(
                    ["git", "status", "--porcelain", "--untracked-files=no"],
                    cwd=source,
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout.strip()
            )
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {
        "experiments": installed("lightning-hydra-experiments"),
        "git_commit": None if commit is None else commit + ("-dirty" if dirty else ""),
        "torch": installed("torch"),
        "lightning": installed("lightning"),
        "hydra": installed("hydra-core"),
        "torchmetrics": installed("torchmetrics"),
        "python": ".".join(map(str, sys.version_info[:3])),
    }
