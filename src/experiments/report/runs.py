"""A sweep as its jobs' files say: one row per job from its metrics.json (`collect`), the jobs
that differ only in `seed` as one configuration with its seeds' statistics (`configurations`),
the logged curves (`scalars`, `learning_curves`), and `read_sweep`, which puts them together
(a comparison's plan included) for the tables, the pictures and the api's Sweep."""

from __future__ import annotations

import csv
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.core.overrides import key_of
from experiments.core.state import METRICS, read_record
from experiments.report.comparison import read_plan, tuned_keys
from experiments.report.statistics import spread

STATUS_ORDER = {"finished": 0, "pruned": 1, "interrupted": 2, "diverged": 3, "failed": 4}


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job that left a metrics.json, best first, then diverged and failed ones."""
    rows = []
    for path in sweep_dir.glob(f"**/{METRICS}"):
        # written whole or not at all (write_atomically): one that cannot be read is damaged
        metrics = read_record(path.parent) or {
            "status": "failed",
            "reason": f"its {METRICS} cannot be read",
        }
        monitor = metrics.get("monitor") or {}
        hparams = metrics.get("hparams") or {}
        val_loss = (metrics.get("metrics") or {}).get("val/loss") or {}
        rows.append(
            {
                "job": path.parent.relative_to(sweep_dir).as_posix(),
                "status": metrics["status"],
                "reason": metrics.get("reason") or "",
                "monitor": monitor.get("name"),
                "mode": monitor.get("mode", "min"),
                "best": monitor.get("best"),
                "final": val_loss.get("final"),
                "test": metrics.get("test") or {},
                "overrides": metrics.get("overrides") or [],
                "epochs": metrics.get("epochs"),
                "wall_time_s": metrics.get("wall_time_s"),
                "optimizer": hparams.get("optimizer"),
                "lr": hparams.get("optimizer.lr"),
                "hparams": hparams,
                "best_metrics": {
                    f"best/{k.replace('/', '_')}": v.get("best")
                    for k, v in (metrics.get("metrics") or {}).items()
                    if k.startswith("val/")
                },
            }
        )

    def rank(row: dict[str, Any]) -> tuple:
        best = row["best"]
        score = (
            math.inf
            if best is None or not math.isfinite(best)
            else (best if row["mode"] == "min" else -best)
        )
        return STATUS_ORDER.get(row["status"], 4), score, row["job"]

    return sorted(rows, key=rank)


def configurations(
    rows: list[dict[str, Any]], named_by: set[str] | None = None
) -> list[dict[str, Any]]:
    """The jobs grouped by their overrides other than `seed`, best first by the mean of the
    monitored best over their finished seeds; each with the mean, standard deviation and 95%
    t-interval of the monitored best and of every test metric. A configuration is named by the
    overrides that differ between configurations, or by those of the keys `named_by`."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(sorted(o for o in row["overrides"] if key_of(o) != "seed"))
        groups.setdefault(key, []).append(row)
    shared = set.intersection(*(set(key) for key in groups)) if len(groups) > 1 else set()
    monitors = sorted({r["monitor"] for r in rows if r["monitor"]})
    tests = sorted({k for r in rows for k in r["test"]})
    found = []
    for key, jobs in groups.items():
        finished = [r for r in jobs if r["status"] == "finished"]
        values = {f"best {m}": [r["best"] for r in finished if r["monitor"] == m] for m in monitors}
        values |= {t: [r["test"][t] for r in finished if t in r["test"]] for t in tests}
        if named_by is not None:
            name = ",".join(o for o in key if key_of(o) in named_by)
        else:
            name = ",".join(o for o in key if o not in shared) or ",".join(key)
        found.append(
            {
                "configuration": name or "(defaults)",
                "seeds": len(jobs),
                "finished": len(finished),
                "diverged": sum(r["status"] == "diverged" for r in jobs),
                "other": len(jobs) - len(finished) - sum(r["status"] == "diverged" for r in jobs),
                "mode": jobs[0]["mode"],
                "stats": {name: spread(v) for name, v in values.items() if v},
                "jobs": [r["job"] for r in jobs],
                "finished_jobs": [r["job"] for r in finished],
                "diverged_jobs": [r["job"] for r in jobs if r["status"] == "diverged"],
            }
        )

    def rank(config: dict[str, Any]) -> tuple:
        mean = config["stats"].get(f"best {monitors[0]}", {}).get("mean") if monitors else None
        if mean is None or not math.isfinite(mean):
            return 1, math.inf, config["configuration"]
        return 0, mean if config["mode"] == "min" else -mean, config["configuration"]

    return sorted(found, key=rank)


@dataclass
class SweepReport:
    """A sweep as its jobs' files say, as far as it got."""

    rows: list[dict[str, Any]]  # every job with a metrics.json, best first
    jobs: list[dict[str, Any]]  # those its tables count: a comparison's plan, or every job
    configs: list[dict[str, Any]]  # the jobs' configurations, best first
    plan: dict[str, Any] | None  # sweep=compare's plan (experiments.report.comparison.PLAN)
    stage_two: list[dict[str, Any]] | None  # its stage-2 configurations, named by every tuned key

    @property
    def earlier(self) -> list[dict[str, Any]]:
        """Jobs in the folder that the comparison's plan does not use: an earlier run of the same
        sweep with more seeds or other grid points left them."""
        counted = {r["job"] for r in self.jobs}
        return [r for r in self.rows if r["job"] not in counted]


def read_sweep(sweep_dir: Path) -> SweepReport:
    rows = collect(sweep_dir)
    plan = read_plan(sweep_dir)
    if plan is None:
        return SweepReport(rows, rows, configurations(rows), None, None)
    stage_two_jobs = set(plan["stage2"])
    planned = stage_two_jobs | set(plan.get("stage1_jobs", [r["job"] for r in rows]))
    planned |= {job for b in (plan.get("baselines") or {}).values() for job in b["jobs"]}
    jobs = [r for r in rows if r["job"] in planned]
    named_by = tuned_keys(plan) | {"optimizer", "optimizer.lr"}
    stage_two = configurations([r for r in jobs if r["job"] in stage_two_jobs], named_by)
    # a configuration whose seeds diverged does not come first on the seeds that survived
    stage_two.sort(key=lambda c: c["diverged"] > 0)
    return SweepReport(rows, jobs, configurations(jobs), plan, stage_two)


def line_names(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Each job's line in the pictures, by job: its optimizer and every other setting the sweep
    varied besides the learning rate and the seed (`adam`, `adam scheduler=cosine`). Jobs of one
    line differ in their learning rate and seed only: the line is their mean over seeds, by
    learning rate."""
    values = [{key_of(o): o for o in r["overrides"]} for r in rows]
    keys = {k for v in values for k in v} - {"optimizer", "optimizer.lr", "seed"}
    varied = sorted(k for k in keys if len({v.get(k) for v in values}) > 1)
    return {
        r["job"]: " ".join([str(r["optimizer"]), *(v[k] for k in varied if k in v)])
        for r, v in zip(rows, values)
    }


def learning_curves(
    sweep_dir: Path, configs: list[dict[str, Any]], tags: list[str]
) -> list[dict[str, Any]]:
    """Per configuration and tag, as its jobs' TensorBoard event files hold them: the finished
    seeds' mean, min and max at the steps they all logged, and each diverged seed's own points."""
    curves = []
    for config in configs:
        found: dict[str, dict[str, Any]] = {}
        histories = {job: scalars(sweep_dir / job, tags) for job in config["jobs"]}
        for tag in tags:
            runs = [histories[job][tag] for job in config["finished_jobs"] if tag in histories[job]]
            diverged = [
                histories[job][tag] for job in config["diverged_jobs"] if tag in histories[job]
            ]
            steps = sorted(set.intersection(*(set(run) for run in runs))) if runs else []
            if not steps and not diverged:
                continue
            found[tag] = {
                "steps": steps,
                "mean": [math.fsum(run[k] for run in runs) / len(runs) for k in steps],
                "low": [min(run[k] for run in runs) for k in steps],
                "high": [max(run[k] for run in runs) for k in steps],
                "runs": runs,
                "diverged": [(sorted(run), [run[k] for k in sorted(run)]) for run in diverged],
            }
        curves.append({"name": config["configuration"], "curves": found})
    return curves


def scalars(run_dir: Path, tags: list[str] | None = None) -> dict[str, dict[int, float]]:
    """The run's logged values of `tags` (None: every tag), step -> value, the last written where a
    resumed run logged a step twice (`timed_scalars` without the times)."""
    return {
        tag: {step: value for step, (_, value) in points.items()}
        for tag, points in timed_scalars(run_dir, tags).items()
    }


def timed_scalars(
    run_dir: Path, tags: list[str] | None = None, since_start: bool = False
) -> dict[str, dict[int, tuple[float | None, float]]]:
    """The run's logged values of `tags` (None: every tag), step -> (wall-clock time, value), the
    last written where a resumed run logged a step twice: from its TensorBoard event files, read
    by TensorBoard's own reader, or under logger=csv from its metrics.csv (Lightning's CSVLogger
    writes a row per logging call, so one step's values may be spread over several rows, and no
    time: None). since_start: the times in seconds since the event file was opened (the logger's
    start, before the first step). A run's files are read once while they stay as they are (a
    summary's tables, curves and times to a target read the same jobs)."""
    where, files = run_dir.resolve(), logged_files(run_dir)
    logged = read_logged(where, files)
    events = any(name.startswith("events.out.tfevents.") for name, *_ in files)
    offset = first_opened(where, files) if since_start and events else 0.0
    return {
        tag: {
            step: (None if time is None else time - offset, value)
            for step, (time, value) in points.items()
        }
        for tag, points in logged.items()
        if tags is None or tag in tags
    }


def logged_files(run_dir: Path) -> tuple:
    """What a run's logged values are read from, as it is now: each event file's (or metrics.csv's)
    name, size and modification time."""
    files = sorted(run_dir.glob("events.out.tfevents.*")) or [run_dir / "metrics.csv"]
    return tuple(
        (f.name, stat.st_size, stat.st_mtime_ns) for f in files if (stat := stat_of(f)) is not None
    )


def stat_of(path: Path) -> Any:
    try:
        return path.stat()
    except OSError:
        return None


@functools.lru_cache(maxsize=512)
def read_logged(run_dir: Path, files: tuple) -> dict[str, dict[int, tuple[float | None, float]]]:
    """Every logged value of the run, step -> (wall-clock time, value); `files` (logged_files)
    makes a changed run a new read."""
    if any(name.startswith("events.out.tfevents.") for name, *_ in files):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        reader_log = logging.getLogger("tensorboard")  # "No path found after ..." for each run
        level = reader_log.level
        reader_log.setLevel(logging.WARNING)
        try:
            events.Reload()
        finally:
            reader_log.setLevel(level)
        return {
            tag: {event.step: (event.wall_time, event.value) for event in events.Scalars(tag)}
            for tag in events.Tags()["scalars"]
        }
    found: dict[str, dict[int, tuple[float | None, float]]] = {}
    if files:
        with (run_dir / "metrics.csv").open(newline="") as logged:
            for row in csv.DictReader(logged):
                if not row.get("step"):
                    continue
                step = int(float(row.pop("step")))
                for tag, value in row.items():
                    if value not in ("", None):
                        found.setdefault(tag, {})[step] = (None, float(value))
    return found


@functools.lru_cache(maxsize=512)
def first_opened(run_dir: Path, files: tuple) -> float:
    """opened_at, once while the run's files stay as they are."""
    return opened_at(run_dir)


def opened_at(run_dir: Path) -> float:
    """When the run's first event file was opened: the earliest first record of its event files
    (EventAccumulator's FirstEventTimestamp reads them in name order, where `.10` sorts before `.9`)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return min(
        next(iter(EventFileLoader(str(path)).Load())).wall_time
        for path in run_dir.glob("events.out.tfevents.*")
    )


def curve_tags(sweep_dir: Path, configs: list[dict[str, Any]]) -> list[str]:
    """The training and validation curves a sweep's jobs log (train/*, val/*) and the totals of
    their instruments (dynamics/<name>, with dynamics=...), as the first finished job of the first
    configuration that has one logged them."""
    for config in configs:
        for job in config["finished_jobs"]:
            logged = scalars(sweep_dir / job)
            if logged:
                return sorted(
                    t
                    for t in logged
                    if t.startswith(("train/", "val/"))
                    or (t.startswith("dynamics/") and t.count("/") == 1)
                )
    return ["train/loss", "val/loss"]


def configuration_names(
    configs: list[dict[str, Any]], by_job: dict[str, dict[str, Any]]
) -> list[str]:
    """Each configuration's short name, as a job's (experiments.core.overrides.job_names) without
    its seed: `adam,lr=0.01`; TensorBoard's run for it in the sweep's dashboard."""
    from experiments.core.config import CONF_DIR
    from experiments.core.overrides import job_names

    overrides = [
        [o for o in by_job[c["jobs"][0]]["overrides"] if key_of(o) != "seed"] for c in configs
    ]
    groups = {key_of(o) for each in overrides for o in each if (CONF_DIR / key_of(o)).is_dir()}
    names = job_names(overrides, groups=groups)
    seen: dict[str, int] = {}
    for k, name in enumerate(names):
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[k] = f"{name}~{seen[name]}"
    return names
