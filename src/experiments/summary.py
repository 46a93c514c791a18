"""The end of a sweep: one row per configuration (jobs that differ only in `seed` are one
configuration, its seeds replicates), with the mean, standard deviation and 95% t-interval of the
monitored best and of every test metric (summary.csv, summary.md), one row per job (runs.csv,
runs.md), summary.png (final validation loss by learning rate, a line per optimizer), paths.png
for two-parameter models, and one TensorBoard HParams experiment covering every job. What is
printed is the per-job table while each configuration has one seed, the configurations' otherwise.

Everything is read back from the jobs' metrics.json and trajectory.json files
(experiments.hydra_callbacks.SweepSummary calls `summarize` once all jobs are done).
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import statistics
import sys
from pathlib import Path
from typing import Any

# the sweep's own TensorBoard run (HParams experiment, pictures), listed first; hidden, as .hydra
# is, so that every visible folder of a sweep is a job
SWEEP_RUN = ".sweep"
SWEEP_EVENTS = ".sweep"  # the suffix of the sweep's own event file, the only one it replaces
STATUS_ORDER = {"finished": 0, "pruned": 1, "interrupted": 2, "diverged": 3, "failed": 4}


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job that left a metrics.json, best first, then diverged and failed ones."""
    rows = []
    for path in sweep_dir.glob("**/metrics.json"):
        metrics = json.loads(path.read_text())
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


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
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
            *[number(r["best"]) if r["monitor"] == m else "" for m in monitors],
            *[number(r["test"].get(t)) for t in tests],
            number(r["epochs"]),
            number(r["wall_time_s"]),
            r["reason"],
        ]
        for r in rows
    ]
    return header, body


def setting(override: str) -> str:
    """The key an override sets: `+seed=3` and `seed=3` set seed."""
    return override.lstrip("+~").split("=", 1)[0]


def configurations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs grouped by their overrides other than `seed`, best first by the mean of the
    monitored best over their finished seeds; each with the mean, standard deviation and 95%
    t-interval of the monitored best and of every test metric."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(sorted(o for o in row["overrides"] if setting(o) != "seed"))
        groups.setdefault(key, []).append(row)
    shared = set.intersection(*(set(key) for key in groups)) if len(groups) > 1 else set()
    monitors = sorted({r["monitor"] for r in rows if r["monitor"]})
    tests = sorted({k for r in rows for k in r["test"]})
    found = []
    for key, jobs in groups.items():
        finished = [r for r in jobs if r["status"] == "finished"]
        values = {f"best {m}": [r["best"] for r in finished if r["monitor"] == m] for m in monitors}
        values |= {t: [r["test"][t] for r in finished if t in r["test"]] for t in tests}
        found.append(
            {
                "configuration": ",".join(o for o in key if o not in shared)
                or ",".join(key)
                or "(defaults)",
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


def spread(values: list[float]) -> dict[str, float | None]:
    """Mean, sample standard deviation and the 95% Student-t interval of the mean (None for one value)."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return {"mean": mean, "std": None, "ci95_low": None, "ci95_high": None}
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


# Student's t distribution through the regularized incomplete beta function of mpmath (which torch
# installs with sympy): scipy.stats would do, but an installed scipy costs every run 1.5 s of
# start-up, as torchmetrics then imports scipy.signal. Both agree with scipy to 1e-14.


def t_two_sided(statistic: Any, df: float) -> Any:
    """P(|T| >= |statistic|) for T of Student's t distribution with `df` degrees of freedom, as
    an mpmath number (float() it)."""
    import mpmath

    x = mpmath.mpf(df) / (df + mpmath.mpf(statistic) ** 2)
    return mpmath.betainc(mpmath.mpf(df) / 2, 0.5, 0, x, regularized=True)


@functools.lru_cache(maxsize=None)
def t_quantile(q: float, df: float) -> float:
    """The value t > 0 below which Student's t distribution with `df` degrees of freedom has
    probability q (q > 0.5), as scipy.stats.t.ppf(q, df)."""
    import mpmath

    tail = 2 * (1 - mpmath.mpf(q))
    return float(mpmath.findroot(lambda t: t_two_sided(t, df) - tail, (0, 1e4), solver="illinois"))


def welch_p(a: list[float], b: list[float]) -> float:
    """Welch's t-test of two samples (unequal variances): the two-sided p-value, as
    scipy.stats.ttest_ind(a, b, equal_var=False).pvalue; nan where neither sample varies."""
    va, vb = (statistics.variance(x) / len(x) for x in (a, b))
    if va + vb == 0:
        return math.nan
    statistic = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(t_two_sided(statistic, df))


def configuration_table(configs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    names = list(dict.fromkeys(name for c in configs for name in c["stats"]))
    parts = ("mean", "std", "ci95_low", "ci95_high")
    header = ["configuration", "seeds", "finished", "diverged", "other"]
    header += [f"{name} {part}" for name in names for part in parts]
    body = [
        [
            c["configuration"],
            *(str(c[k]) for k in ("seeds", "finished", "diverged", "other")),
            *(number(c["stats"].get(name, {}).get(part)) for name in names for part in parts),
        ]
        for c in configs
    ]
    return header, body


def printed_configurations(configs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The configurations as printed: each metric as mean +- the 95% interval's half-width."""
    names = list(dict.fromkeys(name for c in configs for name in c["stats"]))

    def cell(stats: dict[str, float | None] | None) -> str:
        if not stats:
            return ""
        if stats["std"] is None:
            return number(stats["mean"])
        if stats["std"] == 0:
            return f"{number(stats['mean'])} (seeds equal)"
        half = stats["ci95_high"] - stats["mean"]
        # the mean to the half-width's two significant digits: 2.928 ± 0.012, not 2.92764 ± 0.012
        digits = min(12, max(0, 1 - math.floor(math.log10(half)))) if half > 0 else 6
        return f"{stats['mean']:.{digits}f} ± {half:.{digits}f}"

    header = ["configuration", "seeds", "finished", "diverged", *names]
    body = [
        [
            c["configuration"],
            *(str(c[k]) for k in ("seeds", "finished", "diverged")),
            *(cell(c["stats"].get(name)) for name in names),
        ]
        for c in configs
    ]
    return header, body


def number(value: Any) -> str:
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def write_table(path: Path, header: list[str], body: list[list[str]]) -> None:
    """The table as path.csv and path.md."""
    with path.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(body)
    path.with_suffix(".md").write_text(markdown(header, body))


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


def write_figures(
    sweep_dir: Path, rows: list[dict[str, Any]], configs: list[dict[str, Any]]
) -> dict[str, Any]:
    """summary.png, curves.png (of `configs`) and, for two-parameter models, paths.png; their
    pixels by file name."""
    from matplotlib.image import imsave

    from experiments.figures import curves_figure, image_of, paths_figure, sweep_figure

    figures = {}
    monitors = [r["monitor"] for r in rows if r["monitor"]]
    if any(r["lr"] is not None for r in rows):
        figures["summary.png"] = sweep_figure(rows, monitors[0] if monitors else "val/loss")
    tags = ["train/loss", *sorted(set(monitors))[:1]]
    curves = learning_curves(sweep_dir, configs, tags)
    by_job = {r["job"]: r for r in rows}
    for curve, config in zip(curves, configs):  # what curves_figure colours many lines by
        curve["lr"] = by_job[config["jobs"][0]]["lr"]
        curve["others"] = besides_lr(by_job[config["jobs"][0]])
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
                    "others": besides_lr(r),
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


def besides_lr(row: dict[str, Any]) -> tuple[str, ...]:
    """What sets a job apart other than its learning rate and seed: lines alike in this differ
    only in the learning rate (figures.lr_colours)."""
    return (
        str(row["optimizer"]),
        *sorted(o for o in row["overrides"] if setting(o) not in ("optimizer.lr", "seed")),
    )


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


def scalars(run_dir: Path, tags: list[str]) -> dict[str, dict[int, float]]:
    """The run's logged values of `tags`, step -> value (the last written where a resumed run
    logged a step twice), read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not any(run_dir.glob("events.out.tfevents.*")):
        return {}
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    reader_log = logging.getLogger("tensorboard")  # "No path found after ..." for each run
    level = reader_log.level
    reader_log.setLevel(logging.WARNING)
    try:
        events.Reload()
    finally:
        reader_log.setLevel(level)
    present = set(events.Tags()["scalars"])
    return {
        tag: {event.step: event.value for event in events.Scalars(tag)}
        for tag in tags
        if tag in present
    }


def write_sweep_events(sweep_dir: Path, rows: list[dict[str, Any]], images: dict[str, Any]) -> None:
    """The sweep's own TensorBoard run, `.sweep` (TensorBoard lists it first): one HParams experiment listing every key and metric any
    job has, so TensorBoard's table shows all of them (it takes the first experiment summary it
    finds), and the sweep's pictures as images (sweep/summary, sweep/curves, sweep/paths)."""
    from torch.utils.tensorboard import SummaryWriter

    from experiments.hparams import show_first, summaries

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
    # what the sweep varied, as its jobs' overrides say: optimizer=adam,sgd, not the settings that
    # differ because the optimizer does
    shared = set.intersection(*(set(row["overrides"]) for row in rows))
    overridden = [setting(o) for row in rows for o in row["overrides"] if o not in shared]
    varied = [key for key in dict.fromkeys(overridden) if key in params]
    metrics = sorted(
        {k for r in rows for k, v in r["best_metrics"].items() if v is not None}
        | {k for r in rows for k in r["test"]}
    )
    experiment, _, _ = summaries(params, metrics, domains=domains)
    show_first(experiment, [*varied, "status"])
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


def seed_of(row: dict[str, Any]) -> int | None:
    """The job's seed: as it trained (hparams), else its last seed= override."""
    if (seed := row["hparams"].get("seed")) is not None:
        return int(seed)
    seeds = [o.split("=", 1)[1] for o in row["overrides"] if setting(o) == "seed"]
    return int(seeds[-1]) if seeds else None


def described(config: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    """A configuration as a sentence names it: `adam at lr 0.1`."""
    overrides = rows[config["jobs"][0]]["overrides"]
    values = {setting(o): o.split("=", 1)[1] for o in overrides if "=" in o}
    words = [values.get("optimizer", "")]
    if "optimizer.lr" in values:
        words.append(f"at lr {values['optimizer.lr']}")
    label = config["configuration"].split(",")
    others = [o for o in label if setting(o) not in ("optimizer", "optimizer.lr")]
    if others:
        words.append("with " + ", ".join(others))
    return " ".join(w for w in words if w) or config["configuration"]


def plus_minus(mean: float, std: float | None) -> str:
    """mean ± std, both to the std's two significant digits; the mean alone without a spread."""
    if not std:
        return number(mean)
    digits = min(12, max(0, 1 - math.floor(math.log10(std))))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def verdict(first: dict[str, Any], second: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    """One sentence on the top two configurations: their means and standard deviations of the
    monitored best, in how many paired seeds the first was better, and Welch's t-test."""
    metric = rows[first["jobs"][0]]["monitor"]
    name = f"best {metric}"
    values = [
        {seed_of(rows[job]): rows[job]["best"] for job in config["finished_jobs"]}
        for config in (first, second)
    ]
    a, b = (list(v.values()) for v in values)
    stats = [first["stats"][name], second["stats"][name]]
    shown = [plus_minus(s["mean"], s["std"]) for s in stats]
    paired = sorted(set(values[0]) & set(values[1]), key=lambda s: (s is None, s))
    lower = first["mode"] == "min"
    wins = sum(
        (values[0][s] < values[1][s]) if lower else (values[0][s] > values[1][s]) for s in paired
    )
    counts = f"{len(a)} and {len(b)} seeds" if len(a) != len(b) else f"{len(a)} seeds"
    numbers = f"{shown[0]} against {shown[1]} ({name}, mean ± std over {counts}"
    diverged = [
        f"{c['diverged']} more of {described(c, rows)} diverged"
        for c in (first, second)
        if c["diverged"]
    ]
    numbers += f"; {' and '.join(diverged)})" if diverged else ")"
    # seeds that ended identically have no spread for a t-test (their rounded std may not be 0)
    p = welch_p(a, b) if len(a) >= 2 and len(b) >= 2 else math.nan
    if math.isnan(p):
        why = "too few seeds" if len(a) < 2 or len(b) < 2 else "every seed ended identically"
        return (
            f"{described(first, rows)} comes out ahead of {described(second, rows)}: {numbers}, "
            f"better in {wins} of {len(paired)} seeds; no t-test ({why})."
        )
    if p < 0.05:
        head = f"{described(first, rows)} beats {described(second, rows)}"
    else:
        head = (
            f"{described(first, rows)} and {described(second, rows)} are not told apart (p ≥ 0.05)"
        )
    return (
        f"{head}: {numbers}, better in {wins} of {len(paired)} seeds, p = {p:.2g} (Welch's t-test)."
    )


def compared(sweep_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """sweep=compare's stage-2 configurations, of its stage-2 jobs only (a rerun with fewer
    seeds leaves more in the folder), best first, those where a seed diverged last; None for any
    other sweep."""
    plan = sweep_dir / "compare.json"
    if not plan.is_file():
        return None
    stage_two = set(json.loads(plan.read_text())["stage2"])
    configs = configurations([r for r in rows if r["job"] in stage_two])
    # a configuration whose seeds diverged does not come first on the seeds that survived
    return sorted(configs, key=lambda c: c["diverged"] > 0)


def all_equal(config: dict[str, Any]) -> bool:
    return all(stats["std"] == 0 for stats in config["stats"].values())


def summarize(sweep_dir: Path) -> dict[str, int]:
    """Write and print the sweep's table, pictures and HParams experiment; the jobs per status."""
    rows = collect(sweep_dir)
    if not rows:
        return {}
    header, body = table(rows)
    write_table(sweep_dir / "runs", header, body)
    configs = configurations(rows)
    write_table(sweep_dir / "summary", *configuration_table(configs))
    stage_two = compared(sweep_dir, rows)
    images = write_figures(sweep_dir, rows, stage_two or configs)
    write_sweep_events(sweep_dir, rows, images)
    counts = {status: sum(r["status"] == status for r in rows) for status in STATUS_ORDER}
    title = f"{len(rows)} jobs: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    caption = "mean ± the half-width of its 95% t-interval, over the finished seeds"
    if stage_two:
        title += f"; sweep=compare, each optimizer's best point ({len(configs)} configurations in summary.csv)"
        print_table(*printed_configurations(stage_two), title, caption)
        by_job = {r["job"]: r for r in rows}
        ranked = [c for c in stage_two if c["finished"]]
        sentence = verdict(ranked[0], ranked[1], by_job) if len(ranked) > 1 else ""
        (sweep_dir / "comparison.md").write_text(
            f"{markdown(*printed_configurations(stage_two))}\n{caption}.\n\n{sentence}\n"
        )
        if sentence:
            print(sentence)
    elif all(c["seeds"] == 1 for c in configs):
        print_table(header, body, title)
    else:
        plural = "s" if len(configs) > 1 else ""
        title += f"; {len(configs)} configuration{plural}"
        print_table(*printed_configurations(configs), title, caption)
    if equal := [c for c in configs if c["finished"] > 1 and all_equal(c)]:
        print(
            f"The seeds of {len(equal)} configuration(s) ended identically: seed changes nothing "
            "in these runs (their start, batches and split are fixed); vary what it should to "
            "see a spread."
        )
    print(
        f"Tables: {sweep_dir}/summary.csv, summary.md (configurations), runs.csv, runs.md (jobs)"
        f"{', comparison.md' if stage_two else ''}; "
        f"pictures: {', '.join(images) or 'none'}"
    )
    print(f"tensorboard --logdir {sweep_dir}")
    return counts
