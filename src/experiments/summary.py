"""The end of a sweep: one row per configuration (jobs that differ only in `seed` are one
configuration, its seeds replicates), with the mean, standard deviation and 95% t-interval of the
monitored best and of every test metric (summary.csv, summary.md), one row per job (runs.csv,
runs.md), summary.png (the monitored best by learning rate, a line per optimizer and setting),
curves.png, paths.png for two-parameter models, and one TensorBoard HParams experiment covering
every job. What is printed is the per-job table while each configuration has one seed, the
configurations' otherwise, and for `sweep=compare` its stage 2 and its verdict
(experiments.comparison).

Everything is read back from the jobs' metrics.json and trajectory.json files
(experiments.hydra_callbacks.SweepSummary calls `summarize` once all jobs are done; the api's
Sweep reads the same tables with `read_sweep`, an unfinished sweep's too). The CSV files hold every
digit; printed and Markdown numbers have as many digits as it takes to tell them apart.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.comparison import (
    closing_sentences,
    has_spread,
    plural,
    read_plan,
    seed_of,
    spread,
    telling_apart,
    tuned_keys,
    with_spread,
)
from experiments.overrides import key_of
from experiments.state import METRICS, read_record

# the sweep's own TensorBoard run (HParams experiment, pictures); hidden, as .hydra is, so that
# every visible folder of a sweep is a job
SWEEP_RUN = ".sweep"
SWEEP_EVENTS = ".sweep"  # the suffix of the sweep's own event file, the only one it replaces
STATUS_ORDER = {"finished": 0, "pruned": 1, "interrupted": 2, "diverged": 3, "failed": 4}


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job that left a metrics.json, best first, then diverged and failed ones."""
    rows = []
    for path in sweep_dir.glob(f"**/{METRICS}"):
        metrics = read_record(path.parent)
        if metrics is None:  # a job writing its first record right now
            continue
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


def job_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One row per job, its numbers as they are (`shown` or `exact` writes them)."""
    monitors = sorted({r["monitor"] for r in rows if r["monitor"]})
    tests = sorted({k for r in rows for k in r["test"]})
    header = [
        "job",
        "status",
        *[f"best {m}" for m in monitors],
        *tests,
        "epochs",
        "wall_time_s",
        "reason",
    ]
    body = [
        [
            r["job"],
            r["status"],
            *[r["best"] if r["monitor"] == m else None for m in monitors],
            *[r["test"].get(t) for t in tests],
            r["epochs"],
            r["wall_time_s"],
            r["reason"],
        ]
        for r in rows
    ]
    return header, body


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


def configuration_table(configs: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """summary.csv: one row per configuration, its numbers as they are."""
    names = list(dict.fromkeys(name for c in configs for name in c["stats"]))
    parts = ("mean", "std", "ci95_low", "ci95_high")
    header = ["configuration", "seeds", "finished", "diverged", "other"]
    header += [f"{name} {part}" for name in names for part in parts]
    body = [
        [
            c["configuration"],
            *(c[k] for k in ("seeds", "finished", "diverged", "other")),
            *(c["stats"].get(name, {}).get(part) for name in names for part in parts),
        ]
        for c in configs
    ]
    return header, body


def printed_configurations(configs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The configurations as printed: each metric as mean ± the 95% interval's half-width, and a
    mean without a spread to at least as many decimals as the others in its column, so that
    2.92764614 (seeds equal) does not stand as 2.92764 beside 2.92764485 ± 0.00000038."""
    names = list(dict.fromkeys(name for c in configs for name in c["stats"]))
    columns = [printed_column([c["stats"].get(name) for c in configs]) for name in names]
    header = ["configuration", "seeds", "finished", "diverged", *names]
    body = [
        [
            c["configuration"],
            *(str(c[k]) for k in ("seeds", "finished", "diverged")),
            *(column[i] for column in columns),
        ]
        for i, c in enumerate(configs)
    ]
    return header, body


def printed_column(cells: list[dict[str, float | None] | None]) -> list[str]:
    """One metric's column of printed_configurations: a mean without a spread to as many digits
    as tell it apart from every other mean in the column."""
    spreads = {
        i: with_spread(s["mean"], s["ci95_high"] - s["mean"])
        for i, s in enumerate(cells)
        if s and has_spread(s["std"]) and has_spread(s["ci95_high"] - s["mean"])
    }
    present = [i for i, s in enumerate(cells) if s]
    texts = dict(zip(present, telling_apart([cells[i]["mean"] for i in present])))
    shown = []
    for i, stats in enumerate(cells):
        if not stats:
            shown.append("")
        elif i in spreads:
            shown.append(spreads[i])
        else:
            shown.append(texts[i] + (" (seeds equal)" if stats["std"] == 0 else ""))
    return shown


def exact(body: list[list[Any]]) -> list[list[str]]:
    """Every digit, as CSV files hold numbers."""
    return [
        ["" if v is None else repr(v) if isinstance(v, float) else str(v) for v in row]
        for row in body
    ]


def shown(body: list[list[Any]]) -> list[list[str]]:
    """Numbers to six significant digits, or as many more as tell a column's values apart."""
    columns = list(zip(*body)) if body else []
    texts: list[list[str]] = []
    for column in columns:
        numbers = [v for v in column if isinstance(v, float)]
        found = iter(telling_apart(numbers))
        texts.append(
            [next(found) if isinstance(v, float) else "" if v is None else str(v) for v in column]
        )
    return [list(row) for row in zip(*texts)] if texts else []


def csv_text(header: list[str], body: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(exact(body))
    return out.getvalue()


def write_table(path: Path, header: list[str], body: list[list[Any]]) -> None:
    """The table as path.csv (every digit) and path.md (the digits that tell values apart)."""
    path.with_suffix(".csv").write_text(csv_text(header, body))
    path.with_suffix(".md").write_text(markdown(header, shown(body)))


def markdown(header: list[str], body: list[list[str]]) -> str:
    escape = lambda cell: cell.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def print_table(header: list[str], body: list[list[str]], title: str, caption: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200, soft_wrap=False)
    rich_table = Table(
        title=title, title_justify="left", caption=caption or None, caption_justify="left"
    )
    for name in header:
        rich_table.add_column(name, overflow="fold")
    for row in body:
        style = {"diverged": "yellow", "failed": "red"}.get(row[1])
        rich_table.add_row(*row, style=style)
    console.print(rich_table)


@dataclass
class SweepReport:
    """A sweep as its jobs' files say, as far as it got."""

    rows: list[dict[str, Any]]  # every job with a metrics.json, best first
    jobs: list[dict[str, Any]]  # those its tables count: a comparison's plan, or every job
    configs: list[dict[str, Any]]  # the jobs' configurations, best first
    plan: dict[str, Any] | None  # sweep=compare's plan (experiments.comparison.PLAN)
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
    jobs = [r for r in rows if r["job"] in planned]
    named_by = tuned_keys(plan) | {"optimizer", "optimizer.lr"}
    stage_two = configurations([r for r in jobs if r["job"] in stage_two_jobs], named_by)
    # a configuration whose seeds diverged does not come first on the seeds that survived
    stage_two.sort(key=lambda c: c["diverged"] > 0)
    return SweepReport(rows, jobs, configurations(jobs), plan, stage_two)


def write_figures(
    sweep_dir: Path, rows: list[dict[str, Any]], configs: list[dict[str, Any]]
) -> dict[str, Any]:
    """summary.png, curves.png (of `configs`) and, for two-parameter models, paths.png; their
    pixels by file name."""
    from matplotlib.image import imsave

    from experiments.figures import curves_figure, image_of, paths_figure, sweep_figure

    figures = {}
    lines = line_names(rows)
    monitors = [r["monitor"] for r in rows if r["monitor"]]
    if any(r["lr"] is not None for r in rows):
        figures["summary.png"] = sweep_figure(
            [{**r, "line": lines[r["job"]]} for r in rows], monitors[0] if monitors else "val/loss"
        )
    tags = ["train/loss", *sorted(set(monitors))[:1]]
    curves = learning_curves(sweep_dir, configs, tags)
    by_job = {r["job"]: r for r in rows}
    for curve, config in zip(curves, configs):  # what curves_figure colours many lines by
        curve["lr"] = by_job[config["jobs"][0]]["lr"]
        curve["others"] = lines[config["jobs"][0]]
    if any(c["curves"] for c in curves):
        figures["curves.png"] = curves_figure(curves, tags)
    trajectories = []
    for r in rows:
        path = sweep_dir / r["job"] / "trajectory.json"
        if path.is_file():
            trajectories.append(
                {
                    **json.loads(path.read_text()),
                    "name": r["job"],
                    "optimizer": r["optimizer"] or r["job"],
                    "lr": r["lr"],
                    "seed": seed_of(r),
                    "others": lines[r["job"]],
                    "status": r["status"],
                }
            )
    if trajectories and trajectories[0]["x"]:
        figures["paths.png"] = paths_figure(trajectories)
    # each figure drawn once: its pixels are both the PNG and the sweep's TensorBoard image
    images = {name: image_of(figure) for name, figure in figures.items()}
    for name, pixels in images.items():
        imsave(sweep_dir / name, pixels)
    return images


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
    resumed run logged a step twice: from its TensorBoard event files, read by TensorBoard's own
    reader, or under logger=csv from its metrics.csv (Lightning's CSVLogger writes a row per
    logging call, so one step's values may be spread over several rows)."""
    if any(run_dir.glob("events.out.tfevents.*")):
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
            tag: {event.step: event.value for event in events.Scalars(tag)}
            for tag in events.Tags()["scalars"]
            if tags is None or tag in tags
        }
    found: dict[str, dict[int, float]] = {}
    if (run_dir / "metrics.csv").is_file():
        with (run_dir / "metrics.csv").open(newline="") as logged:
            for row in csv.DictReader(logged):
                if not row.get("step"):
                    continue
                step = int(float(row.pop("step")))
                for tag, value in row.items():
                    if value not in ("", None) and (tags is None or tag in tags):
                        found.setdefault(tag, {})[step] = float(value)
    return found


def write_sweep_events(sweep_dir: Path, rows: list[dict[str, Any]], images: dict[str, Any]) -> None:
    """The sweep's own TensorBoard run, `.sweep`: one HParams experiment listing every key and metric any
    job has, so TensorBoard's table shows all of them (it takes the first experiment summary it
    finds), and the sweep's pictures as images (sweep/summary, sweep/curves, sweep/paths)."""
    from torch.utils.tensorboard import SummaryWriter

    from experiments.hparams import mark_differing, summaries

    settings = [{**row["hparams"], "status": row["status"]} for row in rows]
    params: dict[str, Any] = {}
    for each in settings:
        for key, value in each.items():
            params.setdefault(key, value)
    domains = {
        k: sorted({str(each[k]) for each in settings if k in each})
        for k, v in params.items()
        if isinstance(v, str)
    }
    # every key whose value differs between jobs: those swept and those that differ because of
    # them (Adam's betas against SGD's empty value)
    differing = {key for key in params if len({repr(s.get(key)) for s in settings}) > 1}
    metrics = sorted(
        {k for r in rows for k, v in r["best_metrics"].items() if v is not None}
        | {k for r in rows for k in r["test"]}
    )
    experiment, _, _ = summaries(params, metrics, domains=domains)
    mark_differing(experiment, differing)
    # a sweep run again: one experiment, not two (an older version wrote it to the sweep's root)
    for earlier in [
        *sweep_dir.glob(f"events.out.tfevents.*{SWEEP_EVENTS}"),
        *sweep_dir.glob(f"{SWEEP_RUN}/events.out.tfevents.*{SWEEP_EVENTS}"),
    ]:
        earlier.unlink()
    with SummaryWriter(log_dir=str(sweep_dir / SWEEP_RUN), filename_suffix=SWEEP_EVENTS) as writer:
        writer.file_writer.add_summary(experiment)
        for name, pixels in images.items():
            writer.add_image(f"sweep/{name.removesuffix('.png')}", pixels, 0, dataformats="HWC")


def all_equal(config: dict[str, Any]) -> bool:
    return all(stats["std"] == 0 for stats in config["stats"].values())


def equal_seeds_note(sweep_dir: Path, equal: list[dict[str, Any]]) -> str:
    """What seeds that ended identically say: nothing, where their training curves are the same
    too (a fixed start on fixed batches); convergence to one point, where the curves differ."""
    same, different, unknown = 0, 0, 0
    for config in equal:
        curves = [
            scalars(sweep_dir / job, ["train/loss"]).get("train/loss")
            for job in config["finished_jobs"]
        ]
        if any(curve is None for curve in curves):
            unknown += 1
        elif all(curve == curves[0] for curve in curves):
            same += 1
        else:
            different += 1
    notes = []
    if same:
        notes.append(
            f"The seeds of {plural(same, 'configuration')} ended identically, training curves "
            "included: seed changes nothing in these runs (their start, batches and split are "
            "fixed); vary what it should to see a spread."
        )
    if different:
        notes.append(
            f"The seeds of {plural(different, 'configuration')} ended at identical values along "
            "different training curves: the runs differ, and converge to the same point."
        )
    if unknown:
        notes.append(
            f"The seeds of {plural(unknown, 'configuration')} ended at identical values (with no "
            "TensorBoard curves to show whether the runs themselves differed)."
        )
    return " ".join(notes)


def summarize(sweep_dir: Path) -> dict[str, int]:
    """Write and print the sweep's table, pictures and HParams experiment; the jobs per status."""
    report = read_sweep(sweep_dir)
    rows, configs, stage_two = report.jobs, report.configs, report.stage_two
    if not report.rows:
        return {}
    write_table(sweep_dir / "runs", *job_table(report.rows))
    write_table(sweep_dir / "summary", *configuration_table(configs))
    images = write_figures(sweep_dir, rows, stage_two or configs)
    write_sweep_events(sweep_dir, report.rows, images)
    counts = {status: sum(r["status"] == status for r in rows) for status in STATUS_ORDER}
    title = f"{len(rows)} jobs: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    caption = "mean ± the half-width of its 95% t-interval, over the finished seeds"
    if report.plan is not None:
        title += f"; sweep=compare, each optimizer's best point ({len(configs)} configurations in summary.csv)"
        table = printed_configurations(stage_two)
        print_table(*table, title, caption)
        sentences = closing_sentences(stage_two, report.plan, {r["job"]: r for r in rows})
        (sweep_dir / "comparison.md").write_text(
            f"{markdown(*table)}\n{caption}.\n\n" + "\n\n".join(sentences) + "\n"
        )
        for sentence in sentences:
            print(sentence)
    elif all(c["seeds"] == 1 for c in configs):
        header, body = job_table(rows)
        print_table(header, shown(body), title)
    else:
        title += f"; {plural(len(configs), 'configuration')}"
        print_table(*printed_configurations(configs), title, caption)
    if equal := [c for c in configs if c["finished"] > 1 and all_equal(c)]:
        print(equal_seeds_note(sweep_dir, equal))
    if earlier := report.earlier:
        print(
            f"{plural(len(earlier), 'job')} in this folder {'is' if len(earlier) == 1 else 'are'} not in this comparison's plan (an "
            "earlier run of it with more seeds or other grid points): runs.csv lists them, "
            "summary.csv, the pictures and the verdict leave them out."
        )
    print(
        f"Tables: {sweep_dir}/summary.csv, summary.md (configurations), runs.csv, runs.md (jobs)"
        f"{', comparison.md' if report.plan is not None else ''}; "
        f"pictures: {', '.join(images) or 'none'}"
    )
    print(f"tensorboard --logdir {shlex.quote(str(sweep_dir))}")
    return counts
