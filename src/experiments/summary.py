"""The end of a sweep: one table of every job, best first (summary.csv, summary.md and printed),
summary.png (final validation loss by learning rate, a line per optimizer), paths.png for
two-parameter models, and one TensorBoard HParams experiment covering every job.

Everything is read back from the jobs' metrics.json and trajectory.json files
(experiments.hydra_callbacks.SweepSummary calls `summarize` once all jobs are done).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

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

    def number(value: Any) -> str:
        return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)

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


def write_tables(sweep_dir: Path, header: list[str], body: list[list[str]]) -> None:
    with (sweep_dir / "summary.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(body)
    escape = lambda cell: cell.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in body]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")


def print_table(header: list[str], body: list[list[str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200, soft_wrap=False)
    rich_table = Table(title=title, title_justify="left")
    for name in header:
        rich_table.add_column(name, overflow="fold")
    for row in body:
        style = {"diverged": "yellow", "failed": "red"}.get(row[1])
        rich_table.add_row(*row, style=style)
    console.print(rich_table)


def write_figures(sweep_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    from experiments.figures import paths_figure, sweep_figure

    written = []
    if any(r["lr"] is not None for r in rows):
        sweep_figure(rows, "val/loss").savefig(sweep_dir / "summary.png")
        written.append("summary.png")
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
                    "status": r["status"],
                }
            )
    if trajectories and trajectories[0]["x"]:
        paths_figure(trajectories).savefig(sweep_dir / "paths.png")
        written.append("paths.png")
    return written


def write_hparams_experiment(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    """One HParams experiment at the sweep's root listing every key and metric any job has, so
    TensorBoard's table shows all of them (it takes the first experiment summary it finds)."""
    from torch.utils.tensorboard import SummaryWriter

    from experiments.hparams import summaries

    params: dict[str, Any] = {}
    for row in rows:
        for key, value in row["hparams"].items():
            params.setdefault(key, value)
    if not params:
        return
    domains = {
        k: sorted({str(r["hparams"][k]) for r in rows if k in r["hparams"]})
        for k, v in params.items()
        if isinstance(v, str)
    }
    metrics = sorted(
        {k for r in rows for k, v in r["best_metrics"].items() if v is not None}
        | {k for r in rows for k in r["test"]}
    )
    experiment, _, _ = summaries(params, metrics, domains=domains)
    # a sweep run again: one experiment, not two
    for earlier in sweep_dir.glob(f"events.out.tfevents.*{SWEEP_EVENTS}"):
        earlier.unlink()
    with SummaryWriter(log_dir=str(sweep_dir), filename_suffix=SWEEP_EVENTS) as writer:
        writer.file_writer.add_summary(experiment)


def summarize(sweep_dir: Path) -> dict[str, int]:
    """Write and print the sweep's table, pictures and HParams experiment; the jobs per status."""
    rows = collect(sweep_dir)
    if not rows:
        return {}
    header, body = table(rows)
    write_tables(sweep_dir, header, body)
    figures = write_figures(sweep_dir, rows)
    write_hparams_experiment(sweep_dir, rows)
    counts = {status: sum(r["status"] == status for r in rows) for status in STATUS_ORDER}
    title = f"{len(rows)} jobs: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    print_table(header, body, title)
    print(f"Tables: {sweep_dir}/summary.csv, summary.md; pictures: {', '.join(figures) or 'none'}")
    print(f"tensorboard --logdir {sweep_dir}")
    return counts
