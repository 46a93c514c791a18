"""A sweep's tables: one row per job (runs.csv, runs.md) and per configuration (summary.csv,
summary.md), printed with rich. The CSV files hold every digit; printed and Markdown numbers have
as many digits as it takes to tell them apart."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

from experiments.report.comparison import (
    has_spread,
    telling_apart,
    with_spread,
)


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
