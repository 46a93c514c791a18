"""What `sweep=compare` reports beyond its stage-2 table, from its plan and its jobs' files:

- the studies' picks: which point each repeated search chose per optimizer, and each study's winner;
- every pair of tuned optimizers: the difference of their means with Welch's 95% interval, the
  probability that one beats the other on a seed, and Welch's p adjusted by Holm for the number of
  pairs (pairs.csv);
- the tuning curve: the expected best after n grid points tried at random, per study (tuning.csv,
  tuning.png);
- each optimizer at its defaults (conf/optimizer/) beside its tuned point (the baselines);
- the steps and seconds each configuration takes to reach a target value.

The numbers come from experiments.report.statistics; the sentences and tables from here."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from experiments.core.overrides import key_of
from experiments.report.comparison import (
    described,
    optimizer_of,
    plural,
    telling_apart,
    tuned_keys,
    with_spread,
)
from experiments.report.runs import configurations, timed_scalars
from experiments.report.statistics import expected_best, holm, superiority, welch

ALPHA = 0.05  # a pair is told apart where its Holm-adjusted p is below


def monitored(config: dict[str, Any], rows: dict[str, dict[str, Any]]) -> list[float]:
    """The configuration's finished seeds' monitored best, in job order."""
    return [rows[job]["best"] for job in config["finished_jobs"]]


def metric_of(configs: list[dict[str, Any]], rows: dict[str, dict[str, Any]]) -> str:
    return next((rows[c["jobs"][0]]["monitor"] for c in configs if c["jobs"]), None) or "val/loss"


def lower_is_better(configs: list[dict[str, Any]]) -> bool:
    """As the finished jobs recorded it (a failed job's record has no monitor, so no mode)."""
    return next((c["mode"] for c in configs if c["finished"]), "min") == "min"


def short(value: float | None) -> str:
    return "" if value is None else telling_apart([value], least=4)[0]


# ---- every pair


def pairs(stage_two: list[dict[str, Any]], rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pair of the stage-2 configurations with a finished seed each, in the table's order:
    Welch's difference of means and 95% interval, P(first better on a seed), p and its Holm
    adjustment over all the pairs, and what that supports."""
    ranked = [c for c in stage_two if c["finished"]]
    lower = lower_is_better(ranked)
    found = []
    for i, first in enumerate(ranked):
        for second in ranked[i + 1 :]:
            a, b = monitored(first, rows), monitored(second, rows)
            found.append(
                {
                    "first": described(first, rows),
                    "second": described(second, rows),
                    **welch(a, b),
                    "p_first_better": superiority(a, b, lower),
                }
            )
    for pair, adjusted in zip(found, holm([p["p"] for p in found])):
        pair["p_holm"] = adjusted
        if adjusted is None:
            pair["verdict"] = "no test"
        elif adjusted >= ALPHA:
            pair["verdict"] = "not told apart"
        else:
            better = pair["difference"] < 0 if lower else pair["difference"] > 0
            pair["verdict"] = f"{pair['first'] if better else pair['second']} better"
    return found


def pairs_table(found: list[dict[str, Any]], metric: str) -> tuple[list[str], list[list[str]]]:
    """The pairs as printed: the difference as mean ± the half-width of its interval."""
    header = [
        "first",
        "second",
        f"difference of best {metric} (95% interval)",
        "P(first better on a seed)",
        "p (Welch)",
        "p (Holm)",
        "verdict",
    ]
    body = []
    for pair in found:
        half = None if pair["high"] is None else pair["high"] - pair["difference"]
        difference = (
            with_spread(pair["difference"], half)
            if half and math.isfinite(half)
            else f"{pair['difference']:.3g}"
        )
        body.append(
            [
                pair["first"],
                pair["second"],
                difference,
                f"{pair['p_first_better']:.2f}",
                "" if pair["p"] is None else f"{pair['p']:.2g}",
                "" if pair["p_holm"] is None else f"{pair['p_holm']:.2g}",
                pair["verdict"],
            ]
        )
    return header, body


def ranking(stage_two: list[dict[str, Any]], found: list[dict[str, Any]], rows: dict) -> str | None:
    """The ranking the pairs support, in the table's order: `>` between neighbours told apart,
    `≈` between those that are not (`<` where the lower row is told better: the table puts a
    configuration with a diverged seed last, whatever its mean); and the pairs told apart that
    only a chain of ≈ joins."""
    ranked = [described(c, rows) for c in stage_two if c["finished"]]
    if len(ranked) < 3:
        return None
    verdicts = {(p["first"], p["second"]): p["verdict"] for p in found}
    chain = ranked[0]
    for left, right in zip(ranked, ranked[1:]):
        sign = {f"{left} better": ">", f"{right} better": "<"}.get(verdicts[(left, right)], "≈")
        chain += f" {sign} {right}"
    untold = sum(p["verdict"] in ("not told apart", "no test") for p in found)
    # a pair told apart although only ≈ joins them in the chain
    far = []
    for p in found:
        i, j = ranked.index(p["first"]), ranked.index(p["second"])
        between = [
            verdicts[(x, y)] not in ("not told apart", "no test")
            for x, y in zip(ranked[i:j], ranked[i + 1 : j + 1])
        ]
        if j - i > 1 and p["verdict"].endswith(" better") and not any(between):
            winner = p["verdict"].removesuffix(" better")
            loser = p["second"] if winner == p["first"] else p["first"]
            far.append(f"{winner} beats {loser}")
    besides = f"; across the ≈, {', '.join(far)}" if far else ""
    told = (
        f"every one of the {len(found)} pairs told apart"
        if not untold
        else f"≈: not told apart, as {untold} of the {plural(len(found), 'pair')} are"
    )
    return (
        f"What the seeds support: {chain} ({told}; Welch's t-test on every pair, Holm-corrected, "
        f"α = {ALPHA}){besides}."
    )


# ---- the studies


def point_label(point: list[str], tuned: set[str]) -> str:
    """A grid point by its tuned settings but the optimizer: `lr 0.464`, `lr 0.1, scheduler=cosine`."""
    words = []
    for override in point:
        key, value = key_of(override), override.partition("=")[2]
        if key == "optimizer.lr":
            words.insert(0, f"lr {value}")
        elif key in tuned and key != "optimizer":
            words.append(f"{key}={value}")
    return ", ".join(words) or "as configured"


def study_winners(plan: dict[str, Any], lower: bool) -> list[str | None]:
    """Each study's best optimizer: the one whose pick has the study's best mean."""
    means = {tuple(p["overrides"]): p.get("study_means") or [p["mean"]] for p in plan["stage1"]}
    winners = []
    for s in range(len(plan.get("studies") or [[]])):
        scored = [
            (means[tuple(picks[s])][s], name)
            for name, picks in plan.get("picks", {}).items()
            if picks[s] is not None and means[tuple(picks[s])][s] is not None
        ]
        best = (min if lower else max)(scored, default=None, key=lambda x: x[0])
        winners.append(best[1] if best else None)
    return winners


def picks_sentence(plan: dict[str, Any], lower: bool) -> str | None:
    """How often each optimizer's points were picked, and whether the winner changes between
    studies; None for a single study."""
    studies = plan.get("studies") or []
    if len(studies) < 2:
        return None
    tuned = tuned_keys(plan)
    parts = []
    for name, picks in plan["picks"].items():
        counts: dict[str, int] = {}
        for pick in picks:
            if pick is not None:
                label = point_label(pick, tuned)
                counts[label] = counts.get(label, 0) + 1
        if counts:
            ordered = sorted(counts.items(), key=lambda kv: -kv[1])
            parts.append(
                f"{name or 'the optimizer'} " + ", ".join(f"{label} in {n}" for label, n in ordered)
            )
    seeds = ", ".join("/".join(map(str, study)) for study in studies)
    text = f"Stage 1's {len(studies)} studies (seeds {seeds}) picked: {'; '.join(parts)}."
    if len(plan["picks"]) < 2:
        return text
    winners = [w or "none" for w in study_winners(plan, lower)]
    same = len(set(winners)) == 1
    return (
        f"{text} Each study's best optimizer: {', '.join(winners)} "
        f"({'the same in every study' if same else 'the winner changes between studies'})."
    )


# ---- the tuning curve


def tuning_curves(plan: dict[str, Any], lower: bool) -> list[dict[str, Any]]:
    """Per optimizer and study, the expected best after n = 1 ... N of its grid points tried at
    random (the study's mean over its seeds at each point), and per n the mean, min and max over
    the studies (None where a study could end with only diverged points)."""
    by_name: dict[str, list[list[float | None]]] = {}
    for point in plan["stage1"]:
        means = point.get("study_means") or [point["mean"]]
        by_name.setdefault(optimizer_of(point["overrides"]), []).append(means)
    curves = []
    for name, points in by_name.items():
        studies = list(zip(*points))  # per study, its mean at each point
        per_study = [
            [expected_best(list(values), n, lower) for n in range(1, len(points) + 1)]
            for values in studies
        ]
        columns = list(zip(*per_study))
        curves.append(
            {
                "optimizer": name,
                "points": list(range(1, len(points) + 1)),
                "studies": per_study,
                "mean": [None if None in c else math.fsum(c) / len(c) for c in columns],
                "low": [None if None in c else min(c) for c in columns],
                "high": [None if None in c else max(c) for c in columns],
            }
        )
    return curves


def tuning_table(curves: list[dict[str, Any]], metric: str) -> tuple[list[str], list[list[str]]]:
    """The curve at 1, 2, 4, ... points and all of them: the mean over studies (and its range)."""
    most = max(len(c["points"]) for c in curves)
    shown = sorted({n for n in (1, 2, 4, 8, 16, 32) if n < most} | {most})
    header = ["optimizer", *(f"best {metric} after {plural(n, 'point')}" for n in shown)]
    body = []
    for curve in curves:
        cells = []
        for n in shown:
            if n > len(curve["points"]):
                cells.append("")
                continue
            if curve["mean"][n - 1] is None:
                cells.append("may diverge")
                continue
            mean, low, high = (curve[k][n - 1] for k in ("mean", "low", "high"))
            span = "" if low == high else f" ({short(low)} to {short(high)})"
            cells.append(short(mean) + span)
        body.append([curve["optimizer"] or "(configured)", *cells])
    return header, body


# ---- the baselines


def baselines(
    plan: dict[str, Any], stage_two: list[dict[str, Any]], rows: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each optimizer with a baseline: its tuned configuration (if it reached stage 2) and the one
    at its defaults, each with the mean and interval of the monitored best."""
    named_by = tuned_keys(plan) | {"optimizer", "optimizer.lr"}
    tuned = {optimizer_of(rows[c["jobs"][0]]["overrides"]): c for c in stage_two}
    found = []
    for name, baseline in (plan.get("baselines") or {}).items():
        jobs = [rows[j] for j in baseline["jobs"] if j in rows]
        if not jobs:
            continue
        (config,) = configurations(jobs, named_by)
        found.append({"optimizer": name, "tuned": tuned.get(name), "default": config})
    return found


def baselines_table(
    found: list[dict[str, Any]], plan: dict[str, Any], rows: dict, metric: str
) -> tuple[list[str], list[list[str]]]:
    tuned_keys_ = tuned_keys(plan)
    picks = plan.get("picks") or {}
    header = [
        "optimizer",
        "tuned",
        f"tuned: best {metric}",
        "default",
        f"default: best {metric}",
    ]
    body = []
    for item in found:
        tuned, default = item["tuned"], item["default"]
        cells = [item["optimizer"]]
        if tuned is not None:
            point = rows[tuned["jobs"][0]]["overrides"]
            label = point_label([o for o in point if key_of(o) != "seed"], tuned_keys_)
            votes = [p for p in picks.get(item["optimizer"], []) if p is not None]
            if len(plan.get("studies") or []) > 1:
                agree = sum(point_label(p, tuned_keys_) == label for p in votes)
                label += f" (picked by {agree} of {len(plan['studies'])} studies)"
            cells += [label, mean_and_interval(tuned, metric)]
        else:
            cells += ["(not in stage 2)", ""]
        point = rows[default["jobs"][0]]["overrides"]
        cells += [
            point_label([o for o in point if key_of(o) != "seed"], tuned_keys_),
            mean_and_interval(default, metric),
        ]
        body.append(cells)
    return header, body


def mean_and_interval(config: dict[str, Any], metric: str) -> str:
    stats = config["stats"].get(f"best {metric}")
    if not stats:
        return f"none of {config['seeds']} finished"
    seeds = (
        f" ({config['finished']} of {config['seeds']} seeds)"
        if config["finished"] < config["seeds"]
        else ""
    )
    if stats["std"] and math.isfinite(stats["std"]) and stats["ci95_high"] is not None:
        return with_spread(stats["mean"], stats["ci95_high"] - stats["mean"]) + seeds
    return telling_apart([stats["mean"]])[0] + seeds


def baselines_sentence(found: list[dict[str, Any]], rows: dict, metric: str) -> str | None:
    """Crowded Valley's question: the best optimizer at its defaults against the best tuned one,
    with Welch's interval of what tuning gained."""
    defaults = [f["default"] for f in found if f["default"]["finished"]]
    tuned = [f["tuned"] for f in found if f["tuned"] is not None and f["tuned"]["finished"]]
    if not defaults or not tuned:
        return None
    lower = lower_is_better(defaults)
    pick = min if lower else max
    mean = lambda c: c["stats"][f"best {metric}"]["mean"]  # noqa: E731
    untuned, best = pick(defaults, key=mean), pick(tuned, key=mean)
    shown = [f"{described(c, rows)}, {mean_and_interval(c, metric)}" for c in (untuned, best)]
    if len(defaults) == 1:
        head = f"At its defaults, {shown[0]} (best {metric}); tuned, {shown[1]}"
    else:
        head = (
            f"At their defaults the best of {plural(len(defaults), 'optimizer')} is {shown[0]} "
            f"(best {metric}); the best tuned one, {shown[1]}"
        )
    if set(untuned["jobs"]) == set(best["jobs"]):
        return f"{head}: the same configuration, so tuning gained nothing here."
    gain = welch(monitored(best, rows), monitored(untuned, rows))
    if gain["low"] is None:
        return f"{head}: tuning changed the mean by {gain['difference']:.3g} (no interval: too few seeds or no spread)."
    half = gain["high"] - gain["difference"]
    return (
        f"{head}: tuning changed the mean by {with_spread(gain['difference'], half)} "
        f"(Welch's 95% interval, p = {gain['p']:.2g})."
    )


# ---- time to a target


def target_of(
    plan: dict[str, Any], stage_two: list[dict[str, Any]], metric: str
) -> tuple[float, str] | None:
    """The target value and how it was set: the plan's, else the best stage-2 mean within the
    tolerance."""
    if plan.get("target") is not None:
        return float(plan["target"]), "hydra.sweeper.target"
    ranked = [c for c in stage_two if c["finished"] and f"best {metric}" in c["stats"]]
    if not ranked:
        return None
    lower = lower_is_better(ranked)
    means = [c["stats"][f"best {metric}"]["mean"] for c in ranked]
    best = min(means) if lower else max(means)
    tolerance = float(plan.get("tolerance") if plan.get("tolerance") is not None else 0.01)
    target = best + tolerance * abs(best) if lower else best - tolerance * abs(best)
    how = f"within {tolerance:.3g} of the best mean, {short(best)}: hydra.sweeper.tolerance"
    if 0 < tolerance < 1:
        how = f"within {100 * tolerance:.3g}% of the best mean, {short(best)}: hydra.sweeper.tolerance={tolerance:g}"
    return target, how


def time_to_target(
    sweep_dir: Path, configs: list[dict[str, Any]], metric: str, target: float, lower: bool
) -> list[dict[str, Any]]:
    """Per configuration and finished seed, the first logged step at which the monitored value
    reached the target and the wall-clock seconds since its logger started (None where it never
    did, or under logger=csv, which logs no time); per configuration the median, min and
    max over the seeds that reached it."""
    found = []
    for config in configs:
        steps, seconds, logged = [], [], 0
        for job in config["finished_jobs"]:
            series = timed_scalars(sweep_dir / job, [metric], since_start=True).get(metric, {})
            logged += bool(series)
            hit = next(
                (
                    (step, elapsed)
                    for step, (elapsed, value) in sorted(series.items())
                    if (value <= target if lower else value >= target)
                ),
                None,
            )
            if hit is None:
                continue
            steps.append(hit[0])
            if hit[1] is not None:
                seconds.append(hit[1])
        found.append(
            {
                "configuration": config,
                "reached": len(steps),
                "seeds": len(config["finished_jobs"]),
                "steps": steps,
                "seconds": seconds,
                "logged": logged,
            }
        )
    return found


def spread_text(values: list[float], unit: str = "") -> str:
    if not values:
        return ""
    median = statistics.median(values)
    fmt = (lambda v: f"{v:.0f}") if unit == "" else (lambda v: f"{v:.2f}")  # noqa: E731
    span = "" if min(values) == max(values) else f" ({fmt(min(values))} to {fmt(max(values))})"
    return fmt(median) + span


def time_table(
    found: list[dict[str, Any]], rows: dict, names: dict[int, str]
) -> tuple[list[str], list[list[str]]]:
    header = [
        "configuration",
        "seeds that reached it",
        "steps: median (min to max)",
        "seconds: median (min to max)",
    ]
    body = [
        [
            names.get(id(item["configuration"]), described(item["configuration"], rows)),
            f"{item['reached']} of {item['seeds']}",
            spread_text(item["steps"]),
            spread_text(item["seconds"], "s"),
        ]
        for item in found
    ]
    return header, body


def time_sentence(
    found: list[dict[str, Any]],
    rows: dict,
    metric: str,
    target: float,
    how: str,
    lower: bool,
    names: dict[int, str],
) -> str:
    def name(item: dict[str, Any]) -> str:
        return names.get(id(item["configuration"]), described(item["configuration"], rows))

    sign = "≤" if lower else "≥"
    all_seeds = [f for f in found if f["reached"] == f["seeds"] and f["seeds"]]
    head = f"Time to best {metric} {sign} {short(target)} ({how})"
    if not all_seeds:
        closest = max(found, key=lambda f: f["reached"] / f["seeds"] if f["seeds"] else 0)
        if not closest["reached"]:
            return f"{head}: no configuration reached it."
        return (
            f"{head}: no configuration reached it with every seed; {name(closest)} came closest, "
            f"with {closest['reached']} of {plural(closest['seeds'], 'seed')}."
        )
    fewest = min(statistics.median(f["steps"]) for f in all_seeds)
    leaders = [f for f in all_seeds if statistics.median(f["steps"]) == fewest]
    seconds = [f"{statistics.median(f['seconds']):.2f} s" for f in leaders if f["seconds"]]
    if len(leaders) == 1:
        text = f"{head}: {name(leaders[0])} gets there first, in a median of {fewest:.0f} steps"
    else:
        names_ = ", ".join(name(f) for f in leaders[:-1]) + f" and {name(leaders[-1])}"
        text = f"{head}: {names_} get there first, each in a median of {fewest:.0f} steps"
    if len(seconds) == len(leaders):
        text += f" ({' and '.join(seconds)})"
    missed = [
        f"{name(f)} in {f['seeds'] - f['reached']} of {plural(f['seeds'], 'seed')}"
        for f in found
        if f["reached"] < f["seeds"]
    ]
    if missed:
        text += (
            "; missed by "
            + (", ".join(missed[:-1]) + " and " if len(missed) > 1 else "")
            + missed[-1]
        )
    return text + "."


# ---- all of it, for summary.py


def analyse(sweep_dir: Path, report: Any) -> dict[str, Any]:
    """Everything above for a comparison's report (experiments.report.runs.SweepReport): the
    tables as (title, header, body), the sentences, pairs.csv's and tuning.csv's rows, and what
    tuning.png draws."""
    plan, stage_two = report.plan, report.stage_two
    rows = {r["job"]: r for r in report.rows}
    metric = metric_of(stage_two or report.configs, rows)
    lower = lower_is_better(stage_two or report.configs)
    tables, sentences = [], []
    found_pairs = pairs(stage_two, rows)
    if found_pairs:
        header, body = pairs_table(found_pairs, metric)
        tables.append(
            (f"every pair ({plural(len(found_pairs), 'pair')}), first minus second", header, body)
        )
    if sentence := picks_sentence(plan, lower):
        sentences.append(sentence)
    found_baselines = baselines(plan, stage_two, rows)
    if found_baselines:
        tables.append(
            (
                "each optimizer tuned and at its defaults",
                *baselines_table(found_baselines, plan, rows, metric),
            )
        )
        if sentence := baselines_sentence(found_baselines, rows, metric):
            sentences.append(sentence)
    if target := target_of(plan, stage_two, metric):
        timed = list(stage_two)
        names = {}
        for item in found_baselines:
            default = item["default"]
            if not any(set(default["jobs"]) == set(c["jobs"]) for c in stage_two):
                timed.append(default)
                names[id(default)] = f"{described(default, rows)} (default)"
        times = time_to_target(sweep_dir, timed, metric, target[0], lower)
        if any(t["logged"] for t in times):  # logger=mlflow or none: no curves to read
            sign = "≤" if lower else "≥"
            tables.append(
                (
                    f"time to best {metric} {sign} {short(target[0])}",
                    *time_table(times, rows, names),
                )
            )
            if len(times) > 1:  # who gets there first needs two
                sentences.append(time_sentence(times, rows, metric, *target, lower, names))
    curves = tuning_curves(plan, lower)
    if curves:
        over = "mean over studies (range)" if len(plan.get("studies") or []) > 1 else "one study"
        tables.append(
            (
                f"tuning curve (tuning.png): the expected best after n grid points tried at random, {over}; "
                "may diverge: n points could all be ones that diverged",
                *tuning_table(curves, metric),
            )
        )
    if sentence := ranking(stage_two, found_pairs, rows):
        sentences.append(sentence)
    default_levels = {
        item["optimizer"]: item["default"]["stats"][f"best {metric}"]["mean"]
        for item in found_baselines
        if f"best {metric}" in item["default"]["stats"]
    }
    return {
        "metric": metric,
        "pairs": found_pairs,
        "curves": curves,
        "defaults": default_levels,
        "tables": tables,
        "sentences": sentences,
    }


def pairs_csv(found: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    keys = [
        "first",
        "second",
        "difference",
        "low",
        "high",
        "df",
        "p_first_better",
        "p",
        "p_holm",
        "verdict",
    ]
    return PAIR_COLUMNS_CSV, [[pair[k] for k in keys] for pair in found]


PAIR_COLUMNS_CSV = [
    "first",
    "second",
    "difference",
    "ci95_low",
    "ci95_high",
    "df",
    "p_first_better",
    "p",
    "p_holm",
    "verdict",
]


def tuning_csv(curves: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    body = [
        [curve["optimizer"], n, study, values[n - 1]]
        for curve in curves
        for study, values in enumerate(curve["studies"])
        for n in curve["points"]
    ]
    return ["optimizer", "points", "study", "expected_best"], body
