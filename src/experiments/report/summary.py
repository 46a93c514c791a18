"""The end of a sweep: one row per configuration (jobs that differ only in `seed` are one
configuration, its seeds replicates), with the mean, standard deviation and 95% t-interval of the
monitored best and of every test metric (summary.csv, summary.md), one row per job (runs.csv,
runs.md), summary.png (the monitored best by learning rate, a line per optimizer and setting),
curves.png, paths.png for two-parameter models, and one TensorBoard HParams experiment covering
every job. What is printed is the per-job table while each configuration has one seed, the
configurations' otherwise, and for `sweep=compare` its stage 2 and its verdict
(experiments.report.comparison).

Everything is read back from the jobs' metrics.json and trajectory.json files
(experiments.hydra_callbacks.SweepSummary calls `summarize` once all jobs are done; the api's
Sweep reads the same tables with `read_sweep`, an unfinished sweep's too). The CSV files hold every
digit; printed and Markdown numbers have as many digits as it takes to tell them apart.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from experiments.core.state import MLFLOW_DB, mlflow_ui
from experiments.report.comparison import (
    closing_sentences,
    plural,
)
from experiments.report.events import write_dashboard, write_sweep_events
from experiments.report.figures import colour_map, tuning_figure
from experiments.report.pictures import save_figure, write_figures
from experiments.report.protocol import analyse, pairs_csv, tuning_csv
from experiments.report.runs import (
    STATUS_ORDER,
    configuration_names,
    curve_tags,
    learning_curves,
    line_names,
    read_sweep,
    scalars,
)
from experiments.report.tables import (
    configuration_table,
    csv_text,
    job_table,
    markdown,
    print_table,
    printed_configurations,
    shown,
    write_table,
)


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
    drawn = stage_two or configs
    curves = learning_curves(sweep_dir, drawn, curve_tags(sweep_dir, drawn))
    images = write_figures(sweep_dir, rows, drawn, curves)
    analysis = analyse(sweep_dir, report) if report.plan is not None else None
    if analysis is not None:
        (sweep_dir / "pairs.csv").write_text(csv_text(*pairs_csv(analysis["pairs"])))
        if analysis["curves"]:
            (sweep_dir / "tuning.csv").write_text(csv_text(*tuning_csv(analysis["curves"])))
            images |= save_figure(
                sweep_dir,
                "tuning.png",
                tuning_figure(
                    analysis["curves"],
                    analysis["metric"],
                    analysis["defaults"],
                    colour_map(list(line_names(report.rows).values())),  # as summary.png's
                ),
            )
    write_sweep_events(sweep_dir, report.rows, images)
    dashboard = None
    if any(c["curves"] for c in curves):
        names = configuration_names(drawn, {r["job"]: r for r in report.rows})
        dashboard = write_dashboard(sweep_dir, curves, names, images)
    counts = {status: sum(r["status"] == status for r in rows) for status in STATUS_ORDER}
    title = f"{len(rows)} jobs: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    caption = "mean ± the half-width of its 95% t-interval, over the finished seeds"
    if report.plan is not None:
        title += f"; sweep=compare, each optimizer's best point ({len(configs)} configurations in summary.csv)"
        table = printed_configurations(stage_two)
        print_table(*table, title, caption)
        sentences = closing_sentences(
            stage_two, report.plan, {r["job"]: r for r in rows}, analysis["pairs"]
        )
        # the verdict on the top two stays the last line (api.Sweep.comparison reads it)
        sentences[-1:-1] = analysis["sentences"]
        text = f"{markdown(*table)}\n{caption}.\n"
        for heading, header, body in analysis["tables"]:
            print_table(header, body, heading)
            text += f"\n## {heading}\n\n{markdown(header, body)}"
        (sweep_dir / "comparison.md").write_text(text + "\n" + "\n\n".join(sentences) + "\n")
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
        f"{', comparison.md, pairs.csv, tuning.csv' if report.plan is not None else ''}; "
        f"pictures: {', '.join(images) or 'none'}"
    )
    if dashboard is not None:
        print(
            f"tensorboard --logdir {shlex.quote(str(dashboard))}   # each configuration's mean and band "
            "(Custom Scalars, Time Series) and the pictures (Images)"
        )
    print(f"tensorboard --logdir {shlex.quote(str(sweep_dir))}   # every job (HParams)")
    if (sweep_dir / MLFLOW_DB).is_file():  # logger=mlflow
        print(f"{mlflow_ui(sweep_dir)}   # every job, grouped by its tags")
    return counts
