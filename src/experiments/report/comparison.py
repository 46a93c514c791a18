"""Comparing configurations over their seeds in words: numbers printed to the digits that tell them
apart, and the sentences `sweep=compare` ends with, read from its plan (compare.json, which
hydra/sweeper=compare writes). The arithmetic is experiments.report.statistics'."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from experiments.core.overrides import key_of
from experiments.core.state import read_json, write_json
from experiments.report.statistics import float32_steps, welch_p

PLAN = "compare.json"  # a comparison's two stages, written by its sweeper when stage 2 is chosen


def has_spread(value: float | None) -> bool:
    """A spread with_spread can print: positive and finite (not None, 0, nan or inf)."""
    return value is not None and math.isfinite(value) and value > 0


def with_spread(mean: float, half: float) -> str:
    """mean ± half, both to half's two significant digits (2.928 ± 0.012, not 2.92764 ± 0.012);
    in scientific notation where a mean near zero would print as zeros (4.40e-14 ± 3.1e-15)."""
    exponent = math.floor(math.log10(half))
    decimals = max(0, 1 - exponent)
    if not math.isfinite(mean) or decimals <= 6 or abs(mean) >= 1e-3:
        return f"{mean:.{decimals}f} ± {half:.{decimals}f}"
    top = math.floor(math.log10(abs(mean))) if mean else exponent
    return f"{mean:.{max(1, top - exponent + 1)}e} ± {half:.1e}"


def telling_apart(values: list[float], least: int = 6) -> list[str]:
    """The values to as many significant digits (from `least`, at most 17) as it takes for
    different values to print differently: 2.9276447 and 2.9276449, not 2.92764 twice."""
    distinct = len(set(values))
    for digits in range(min(least, 17), 18):
        shown = [f"{v:.{digits}g}" for v in values]
        if len(set(shown)) == distinct:
            return shown
    return [repr(v) for v in values]


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {words or word + 's'}"


def read_plan(sweep_dir: Path) -> dict[str, Any] | None:
    """A comparison's plan as its sweeper wrote it; None for any other sweep."""
    return read_json(sweep_dir / PLAN)


def write_plan(sweep_dir: Path, plan: dict[str, Any] | None) -> None:
    """The sweeper's plan, once stage 2 is chosen: stage 1's points and means, the chosen point per
    optimizer, stage 2's jobs and seeds. None removes an earlier run's plan."""
    if plan is None:
        (sweep_dir / PLAN).unlink(missing_ok=True)
    else:
        write_json(sweep_dir / PLAN, plan)


def tuned_keys(plan: dict[str, Any]) -> set[str]:
    """The keys stage 1 searched: those whose value differs between its grid points."""
    values: dict[str, set[str]] = {}
    for point in plan["stage1"]:
        for override in point["overrides"]:
            values.setdefault(key_of(override), set()).add(override.partition("=")[2])
    return {key for key, seen in values.items() if len(seen) > 1}


def optimizer_of(overrides: list[str]) -> str:
    return next((o.partition("=")[2] for o in overrides if key_of(o) == "optimizer"), "")


def left_out(plan: dict[str, Any]) -> list[str]:
    """The optimizers stage 1 searched of which no grid point finished every seed of any study."""
    points: dict[str, list[Any]] = {}
    for point in plan["stage1"]:
        means = point.get("study_means") or [point["mean"]]
        points.setdefault(optimizer_of(point["overrides"]), []).extend(means)
    return [
        name or "(the configured optimizer)"
        for name, means in points.items()
        if all(m is None for m in means)
    ]


def seed_of(row: dict[str, Any]) -> int | None:
    """The job's seed: as it trained (hparams), else its last seed= override."""
    if (seed := row["hparams"].get("seed")) is not None:
        return int(seed)
    seeds = [o.split("=", 1)[1] for o in row["overrides"] if key_of(o) == "seed"]
    return int(seeds[-1]) if seeds else None


def described(config: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    """A configuration as a sentence names it: `adam at lr 0.1`, `adam at lr 0.1 with scheduler=cosine`."""
    overrides = rows[config["jobs"][0]]["overrides"]
    values = {key_of(o): o.split("=", 1)[1] for o in overrides if "=" in o}
    words = [values.get("optimizer") or rows[config["jobs"][0]].get("optimizer") or ""]
    if "optimizer.lr" in values:
        words.append(f"at lr {values['optimizer.lr']}")
    label = config["configuration"].split(",")
    others = [o for o in label if key_of(o) not in ("optimizer", "optimizer.lr")]
    if others:
        words.append("with " + ", ".join(others))
    return " ".join(w for w in words if w) or config["configuration"]


def means_shown(stats: list[dict[str, float | None]]) -> list[str]:
    """Each mean ± its standard deviation; means without a spread to the digits that tell them
    apart from the others."""
    bare = telling_apart([s["mean"] for s in stats])
    return [
        with_spread(s["mean"], s["std"]) if has_spread(s["std"]) else b for s, b in zip(stats, bare)
    ]


def over(counts: list[int], stats: list[dict[str, float | None]]) -> str:
    """`mean ± std over 10 seeds`, as far as the numbers shown have a mean and a spread."""
    seeds = (
        f"{counts[0]} and {plural(counts[1], 'seed')}"
        if len(counts) > 1 and counts[0] != counts[1]
        else plural(counts[0], "seed")
    )
    if any(has_spread(s["std"]) for s in stats):
        return f"mean ± std over {seeds}"
    return f"mean over {seeds}" if max(counts) > 1 else seeds


def verdict(
    first: dict[str, Any],
    second: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    holm_p: float | None = None,
    pairs: int = 1,
) -> str:
    """One sentence on the top two configurations: their means and standard deviations of the
    monitored best, in how many paired seeds the first was better (and equal), and Welch's t-test,
    decided on its p adjusted by Holm (`holm_p`) where `pairs` pairs were tested; equal means are
    a tie, whatever order the table lists them in."""
    metric = rows[first["jobs"][0]]["monitor"]
    name = f"best {metric}"
    values = [
        {seed_of(rows[job]): rows[job]["best"] for job in config["finished_jobs"]}
        for config in (first, second)
    ]
    a, b = (list(v.values()) for v in values)
    stats = [first["stats"][name], second["stats"][name]]
    shown = means_shown(stats)
    paired = sorted(set(values[0]) & set(values[1]), key=lambda s: (s is None, s))
    lower = first["mode"] == "min"
    wins = sum(
        (values[0][s] < values[1][s]) if lower else (values[0][s] > values[1][s]) for s in paired
    )
    ties = sum(values[0][s] == values[1][s] for s in paired)
    equal = f", equal in {ties}," if ties else ""
    paired_text = f", better in {wins}{equal} of {plural(len(paired), 'seed')}" if paired else ""
    diverged = [
        f"{c['diverged']} more of {described(c, rows)} diverged"
        for c in (first, second)
        if c["diverged"]
    ]
    besides = f"; {' and '.join(diverged)}" if diverged else ""
    one, other = described(first, rows), described(second, rows)
    if len(set(a) | set(b)) == 1:
        return (
            f"{one} and {other} tie: all {len(a) + len(b)} of their finished seeds end at "
            f"{shown[0]} ({name}{besides}); there is nothing to tell apart."
        )
    numbers = f"{shown[0]} against {shown[1]} ({name}, {over([len(a), len(b)], stats)}{besides})"
    # seeds that ended identically have no spread for a t-test (their rounded std may not be 0)
    p = welch_p(a, b) if len(a) >= 2 and len(b) >= 2 else math.nan
    corrected = holm_p is not None and pairs > 1 and not math.isnan(p)
    decided = holm_p if corrected else p
    if stats[0]["mean"] == stats[1]["mean"]:
        head = f"{one} and {other} tie (equal means)"
    elif math.isnan(p) and float32_steps(stats[0]["mean"], stats[1]["mean"]) <= 4:
        steps = float32_steps(stats[0]["mean"], stats[1]["mean"])
        head = f"{one} and {other} end within float32 rounding of each other ({plural(steps, 'float32 step')} apart)"
    elif math.isnan(p):
        head = f"{one} comes out ahead of {other}"
    elif decided < 0.05:
        head = f"{one} beats {other}"
    else:
        head = f"{one} and {other} are not told apart (p ≥ 0.05{' after correction' if corrected else ''})"
    if math.isnan(p):
        why = "too few seeds" if len(a) < 2 or len(b) < 2 else "the seeds of each ended identically"
        return f"{head}: {numbers}{paired_text}; no t-test ({why})."
    holm_text = f"; {decided:.2g} after Holm's correction for {pairs} pairs" if corrected else ""
    return f"{head}: {numbers}{paired_text}, p = {p:.2g} (Welch's t-test{holm_text})."


def closing_sentences(
    stage_two: list[dict[str, Any]],
    plan: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    pairs: list[dict[str, Any]] | None = None,
) -> list[str]:
    """What a comparison ends with: who was left out and why, then the verdict on the top two
    (its p Holm-adjusted over `pairs`, every pair's comparison), or why there is none."""
    notes = [
        f"{name} is not compared: none of its stage-1 grid points finished every seed"
        + (" in any study." if len(plan.get("studies") or []) > 1 else ".")
        for name in left_out(plan)
    ]
    ranked = [c for c in stage_two if c["finished"]]
    unfinished = [described(c, rows) for c in stage_two if not c["finished"]]
    if unfinished:
        notes.append(
            f"{' and '.join(unfinished)} reached stage 2, but none of {'its' if len(unfinished) == 1 else 'their'} seeds finished."
        )
    if len(ranked) > 1:
        top = (pairs or [{}])[0].get("p_holm")
        tested = sum(p.get("p") is not None for p in pairs or [])  # Holm's m
        return [*notes, verdict(ranked[0], ranked[1], rows, top, tested)]
    if not ranked:
        return [
            *notes,
            "No configuration has a finished stage-2 seed, so there is nothing to compare; try smaller learning rates.",
        ]
    lone = ranked[0]
    name = f"best {rows[lone['jobs'][0]]['monitor']}"
    stats = lone["stats"][name]
    (value,) = means_shown([stats])
    given = len({optimizer_of(p["overrides"]) for p in plan["stage1"]})
    why = (
        "it is the only optimizer given: name two or more to compare them (optimizer=sgd,adam)"
        if given == 1
        else "it is the only configuration with a finished stage-2 seed"
    )
    return [
        *notes,
        f"{described(lone, rows)}: {value} ({name}, {over([lone['finished']], [stats])}); nothing to compare it with, as {why}.",
    ]
