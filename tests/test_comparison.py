"""What a sweep ends with, in-process on job folders as the launchers leave them (metrics.json, a
TensorBoard event file written by TensorBoard's writer and read back by its reader): sentences
that say only what holds (ties, convergence, who was left out, nothing to compare), numbers to
the digits that tell them apart, pictures whose lines are one setting each."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgba

from experiments import api
from experiments.report.comparison import PLAN, telling_apart, with_spread
from experiments.report.figures import curves_figure, paths_figure, sweep_figure
from experiments.report.runs import collect, line_names
from experiments.report.summary import summarize
from experiments.report.tables import printed_column, printed_configurations

BASE = ["experiment=thermometer", "model.init_weight=null", "model.init_bias=null"]


def write_job(
    sweep: Path,
    settings: list[str],
    best: float,
    seed: int,
    status: str = "finished",
    curve: list[float] | None = None,
    logger: str = "tensorboard",
) -> str:
    """A job's folder as a launcher leaves it: metrics.json, and a TensorBoard curve of train/loss."""
    overrides = [*BASE, *settings, f"seed={seed}"]
    name = ",".join(sorted(overrides))
    folder = sweep / name
    folder.mkdir(parents=True)
    values = dict(o.split("=", 1) for o in overrides)
    record = {
        "status": status,
        "reason": "train loss became inf at epoch 3, step 3" if status == "diverged" else None,
        "overrides": overrides,
        "epochs": 100,
        "wall_time_s": 1.0,
        "monitor": {"name": "val/loss", "mode": "min", "best": best},
        "metrics": {"val/loss": {"final": best, "best": best}},
        "test": {"test/loss": best} if status == "finished" else {},
        "hparams": {
            "optimizer": values.get("optimizer", "sgd"),
            "optimizer.lr": float(values["optimizer.lr"]),
            "scheduler": values.get("scheduler", "none"),
            "seed": seed,
        },
    }
    (folder / "metrics.json").write_text(json.dumps(record))
    if curve is not None and logger == "csv":  # as Lightning's CSVLogger writes it
        lines = ["epoch,step,train/loss,val/loss"]
        for step, value in enumerate(curve):
            lines += [f"{step},{step},{value},", f"{step},{step},,{value + 1}"]
        (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    elif curve is not None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(folder)) as writer:
            for step, value in enumerate(curve):
                writer.add_scalar("train/loss", value, step)
    return name


def write_plan(
    sweep: Path,
    stage_one: dict[tuple[str, ...], float | None],
    stage_two: list[str],
    stage_one_jobs: list[str],
) -> None:
    (sweep / "multirun.yaml").write_text("{}\n")  # as the sweeper writes it, for api.load
    (sweep / PLAN).write_text(
        json.dumps(
            {
                "stage1": [
                    {"overrides": list(point), "mean": mean} for point, mean in stage_one.items()
                ],
                "stage1_jobs": stage_one_jobs,
                "chosen": {},
                "stage2": stage_two,
                "seeds": [],
            }
        )
    )


def comparison(
    sweep: Path,
    finals: dict[tuple[str, ...], list[float]],
    stage_one: dict[tuple[str, ...], float | None] | None = None,
    curves: bool = False,
) -> None:
    """A finished sweep=compare: each stage-2 point with its seeds' bests; stage 1 of those
    points (seed 0) and of `stage_one`'s other points."""
    names = []
    for point, bests in finals.items():
        for seed, best in enumerate(bests):
            names.append(
                write_job(
                    sweep, list(point), best, seed, curve=[5.0 + seed, best] if curves else None
                )
            )
    others = []
    for point, mean in (stage_one or {}).items():
        others.append(
            write_job(sweep, list(point), mean or 1e3, 0, "finished" if mean else "diverged")
        )
    first_seeds = [n for n in names if n.endswith("seed=0")]
    write_plan(
        sweep,
        {**{p: b[0] for p, b in finals.items()}, **(stage_one or {})},
        names,
        first_seeds + others,
    )


def verdict_of(sweep: Path, capsys: pytest.CaptureFixture) -> tuple[str, str]:
    summarize(sweep)
    printed = capsys.readouterr().out
    return (sweep / "comparison.md").read_text().strip().splitlines()[-1], printed


def test_an_exact_tie_is_a_tie_not_a_win_by_the_alphabet(tmp_path: Path, capsys):
    """All six stage-2 bests 2.927644968032837 (the issue's sgd,adam at 8000 epochs): a tie."""
    value = 2.927644968032837
    comparison(
        tmp_path,
        {
            ("optimizer=sgd", "optimizer.lr=0.01"): [value] * 3,
            ("optimizer=adam", "optimizer.lr=0.1"): [value] * 3,
        },
    )
    sentence, _ = verdict_of(tmp_path, capsys)
    assert sentence == (
        "sgd at lr 0.01 and adam at lr 0.1 tie: all 6 of their finished seeds end at 2.92764 "
        "(best val/loss); there is nothing to tell apart."
    )
    assert api.load(tmp_path).comparison == sentence


def test_equal_means_of_seeds_that_differ_are_a_tie_with_their_paired_seeds_counted(
    tmp_path: Path, capsys
):
    comparison(
        tmp_path,
        {
            ("optimizer=sgd", "optimizer.lr=0.01"): [1.0, 2.0, 3.0],
            ("optimizer=adam", "optimizer.lr=0.1"): [3.0, 2.0, 1.0],
        },
    )
    sentence, _ = verdict_of(tmp_path, capsys)
    assert sentence.startswith(
        "sgd at lr 0.01 and adam at lr 0.1 tie (equal means): 2.0 ± 1.0 against 2.0 ± 1.0"
    )
    assert "better in 1, equal in 1, of 3 seeds, p = 1 (Welch's t-test)." in sentence
    assert "ahead" not in sentence and "beats" not in sentence


def test_seeds_that_converge_from_different_starts_are_not_said_to_change_nothing(
    tmp_path: Path, capsys
):
    """Randomised starts that all reach the least-squares fit end identically, along different
    curves: the seed changed the runs. Identical curves too: it changed nothing."""
    converged, fixed = tmp_path / "converged", tmp_path / "fixed"
    for seed in range(3):
        write_job(
            converged,
            ["optimizer=adam", "optimizer.lr=0.1"],
            2.9276,
            seed,
            curve=[9.0 + seed, 2.9276],
        )
        write_job(fixed, ["optimizer=adam", "optimizer.lr=0.1"], 2.9276, seed, curve=[9.0, 2.9276])
    summarize(converged)
    said = capsys.readouterr().out
    assert "ended at identical values along different training curves" in said
    assert "changes nothing" not in said
    summarize(fixed)
    said = capsys.readouterr().out
    assert (
        "The seeds of 1 configuration ended identically, training curves included: seed changes nothing"
        in said
    )


def test_numbers_are_printed_to_the_digits_that_tell_them_apart():
    """Beside 2.92764485 ± 0.00000038, seeds that ended equal at 2.92764614 print as 2.92765, not
    as 2.92764 (which looks lower); a value far from the others keeps six digits; losses near
    zero print in scientific notation, not as zeros."""
    stats = [
        {"mean": 2.92764485, "std": 4e-7, "ci95_low": 2.92764447, "ci95_high": 2.92764523},
        {"mean": 2.927646141, "std": 0.0, "ci95_low": 2.927646141, "ci95_high": 2.927646141},
        {"mean": 2.9276, "std": None, "ci95_low": None, "ci95_high": None},
    ]
    configs = [
        {
            "configuration": f"c{k}",
            "seeds": 3,
            "finished": 3,
            "diverged": 0,
            "stats": {"best val/loss": s},
        }
        for k, s in enumerate(stats)
    ]
    _, body = printed_configurations(configs)
    assert [row[4] for row in body] == [
        "2.92764485 ± 0.00000038",
        "2.92765 (seeds equal)",
        "2.9276",
    ]
    near = {"mean": 2.92764473, "std": 1e-7, "ci95_low": 2.9276445, "ci95_high": 2.927645}
    assert (
        printed_column([near, {**near, "mean": 2.927644791, "std": 0.0}])[1]
        == "2.9276448 (seeds equal)"
    )
    far = {"mean": 345.33773804, "std": None, "ci95_low": None, "ci95_high": None}
    tiny = {"mean": 2e-7, "std": 5e-7, "ci95_low": -2.5e-7, "ci95_high": 6.5e-7}
    assert printed_column([tiny, far]) == ["2.0e-07 ± 4.5e-07", "345.338"]
    assert with_spread(4.4e-14, 3.1e-15) == "4.40e-14 ± 3.1e-15"
    assert with_spread(0.0, 3.1e-15) == "0.0e+00 ± 3.1e-15"
    assert with_spread(2.928, 0.0123) == "2.928 ± 0.012"
    assert telling_apart([2.92764473, 2.92764487, 2.92764473]) == [
        "2.9276447",
        "2.9276449",
        "2.9276447",
    ]


def test_tables_keep_every_digit_in_csv_and_tell_jobs_apart_in_markdown(tmp_path: Path, capsys):
    for k, best in enumerate([4.4e-14, 4.6e-14, 2.92764473, 2.92764487]):
        write_job(tmp_path, ["optimizer=sgd", f"optimizer.lr={0.6 + k / 10}"], best, 0)
    summarize(tmp_path)
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert [float(r["best val/loss"]) for r in rows] == [4.4e-14, 4.6e-14, 2.92764473, 2.92764487]
    assert "2.9276447 " in printed and "2.9276449 " in printed and "4.4e-14" in printed
    markdown = (tmp_path / "runs.md").read_text()
    assert "| 2.9276447 |" in markdown and "| 2.9276449 |" in markdown


def test_summary_png_averages_seeds_of_one_setting_only_and_keeps_crosses_apart(tmp_path: Path):
    """With scheduler=none,cosine swept beside the learning rate, adam has a line per schedule,
    each the mean of its own seeds; two lines diverging at one rate put their crosses on rows of
    their own."""
    means = {"none": [3.0, 3.2], "cosine": [7.0, 7.4]}
    for schedule, bests in means.items():
        for seed, best in enumerate(bests):
            write_job(
                tmp_path,
                ["optimizer=adam", "optimizer.lr=0.1", f"scheduler={schedule}"],
                best,
                seed,
            )
        write_job(
            tmp_path,
            ["optimizer=adam", "optimizer.lr=1.0", f"scheduler={schedule}"],
            1e3,
            0,
            "diverged",
        )
    rows = collect(tmp_path)
    lines = line_names(rows)
    figure = sweep_figure([{**r, "line": lines[r["job"]]} for r in rows], "val/loss")
    ax = figure.axes[0]
    for schedule, bests in means.items():
        line = next(ln for ln in ax.lines if ln.get_gid() == f"mean:adam scheduler={schedule}")
        assert list(line.get_ydata()) == [pytest.approx(sum(bests) / 2)]
    crosses = [
        c.get_offsets()[0][1] for c in ax.collections if str(c.get_gid()).startswith("diverged:")
    ]
    assert len(crosses) == 2 and crosses[0] != crosses[1]


def test_a_comparison_names_every_setting_it_tuned_for_its_winners(tmp_path: Path, capsys):
    """Both winners took scheduler=cosine: the table and the sentence still say so."""
    comparison(
        tmp_path,
        {
            ("optimizer=adam", "optimizer.lr=0.1", "scheduler=cosine"): [1.0, 1.1, 1.2],
            ("optimizer=sgd", "optimizer.lr=0.01", "scheduler=cosine"): [2.0, 2.1, 2.2],
        },
        {
            ("optimizer=adam", "optimizer.lr=0.1", "scheduler=none"): 1.5,
            ("optimizer=sgd", "optimizer.lr=0.01", "scheduler=none"): 2.5,
        },
    )
    sentence, printed = verdict_of(tmp_path, capsys)
    assert sentence.startswith(
        "adam at lr 0.1 with scheduler=cosine beats sgd at lr 0.01 with scheduler=cosine"
    )
    assert "optimizer.lr=0.1,optimizer=adam,scheduler=cosine" in printed


def test_a_rerun_with_fewer_seeds_counts_the_plans_seeds_everywhere(tmp_path: Path, capsys):
    """The folder holds 4 seeds of each point from an earlier run; the plan now takes 3."""
    comparison(
        tmp_path,
        {
            ("optimizer=adam", "optimizer.lr=0.1"): [1.0, 1.1, 1.2],
            ("optimizer=sgd", "optimizer.lr=0.01"): [2.0, 2.1, 2.2],
        },
    )
    for point in (["optimizer=adam", "optimizer.lr=0.1"], ["optimizer=sgd", "optimizer.lr=0.01"]):
        write_job(tmp_path, point, 9.0, 3)
    sentence, printed = verdict_of(tmp_path, capsys)
    assert "mean ± std over 3 seeds" in sentence
    summary = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["seeds"] for r in summary] == ["3", "3"]
    assert list(api.load(tmp_path).configurations["seeds"]) == [3, 3]
    assert "2 jobs in this folder are not in this comparison's plan" in printed
    assert len(list(csv.DictReader((tmp_path / "runs.csv").open()))) == 8  # every job listed


def test_an_optimizer_left_out_and_a_lone_one_are_said_at_the_end(tmp_path: Path, capsys):
    """rmsprop diverged at every grid point; adam alone reached stage 2, with one seed."""
    comparison(
        tmp_path,
        {("optimizer=adam", "optimizer.lr=0.1"): [1.0]},
        {
            ("optimizer=rmsprop", "optimizer.lr=0.1"): None,
            ("optimizer=rmsprop", "optimizer.lr=1.0"): None,
        },
    )
    sentence, printed = verdict_of(tmp_path, capsys)
    notes = (tmp_path / "comparison.md").read_text()
    assert "rmsprop is not compared: none of its stage-1 grid points finished every seed." in notes
    assert sentence == (
        "adam at lr 0.1: 1 (best val/loss, 1 seed); nothing to compare it with, as it is the "
        "only configuration with a finished stage-2 seed."
    )
    assert printed.rstrip().splitlines()[-4:-2] == [
        "rmsprop is not compared: none of its stage-1 grid points finished every seed.",
        sentence,
    ]


def test_a_comparison_of_one_optimizer_says_there_is_nothing_to_compare(tmp_path: Path, capsys):
    comparison(
        tmp_path,
        {("optimizer=adam", "optimizer.lr=0.1"): [1.0, 1.2]},
        {("optimizer=adam", "optimizer.lr=0.01"): 3.0},
    )
    sentence, _ = verdict_of(tmp_path, capsys)
    assert sentence == (
        "adam at lr 0.1: 1.10 ± 0.14 (best val/loss, mean ± std over 2 seeds); nothing to compare "
        "it with, as it is the only optimizer given: name two or more to compare them "
        "(optimizer=sgd,adam)."
    )


def trajectory(**fields) -> dict:
    """A finished job's path as paths_figure takes it, over three points of a line."""
    path = {"x": [0.0, 1.0, 2.0], "y": [1.0, 3.0, 5.0], "w": [0.0, 1.0], "b": [0.0, 0.5]}
    return {**path, "optimizer": "adam", "lr": 0.1, "seed": 0, "status": "finished", **fields}


def test_the_paths_of_seeds_of_one_learning_rate_are_told_apart_by_seed():
    trajectories = [trajectory(name=f"job{s}", seed=s, others="adam") for s in range(3)]
    labels = [t.get_text() for t in paths_figure(trajectories).axes[0].get_legend().get_texts()]
    assert labels == ["lr=0.1, seed 0", "lr=0.1, seed 1", "lr=0.1, seed 2"]
    alone = paths_figure(trajectories[:1]).axes[0].get_legend().get_texts()
    assert [t.get_text() for t in alone] == ["lr=0.1"]


def curve(name: str, lr: float, others: str, steps: list[int], seeds: int = 2) -> dict:
    return {
        "name": name,
        "lr": lr,
        "others": others,
        "curves": {
            "val/loss": {
                "steps": steps,
                "mean": [1.0] * len(steps),
                "low": [0.5] * len(steps),
                "high": [1.5] * len(steps),
                "runs": [{}] * seeds,
                "diverged": [],
            }
        },
    }


def test_one_validation_is_a_point_with_its_range_not_a_hairline():
    figure = curves_figure([curve("adam", 0.1, "adam", [100])], ["val/loss"])
    ax = figure.axes[0]
    (line,) = [ln for ln in ax.lines if ln.get_gid() == "mean:adam"]
    assert line.get_marker() == "o"
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]  # no hairline band
    assert len(ax.containers) == 1  # the error bar from the seeds' least to their most


def test_many_lines_of_two_optimizers_are_coloured_by_learning_rate_in_a_row_each():
    """11 learning rates x sgd,adam: a row of panels per optimizer, one colour per learning rate
    on one log scale and a colorbar, instead of a 22-entry legend of ten repeating colours."""
    lrs = [10 ** (-4 + k / 2.5) for k in range(11)]
    configs = [curve(f"{o} {lr:g}", lr, o, [0, 100]) for o in ("sgd", "adam") for lr in lrs]
    figure = curves_figure(configs, ["val/loss"])
    assert not figure.legends and len(figure.axes) == 3  # two rows, one colorbar
    rows = figure.axes[:2]
    assert [ax.get_title() for ax in rows] == ["sgd: val/loss", "adam: val/loss"]
    for ax in rows:
        assert len({to_rgba(ln.get_color()) for ln in ax.lines}) == 11
    colour = {
        to_rgba(ln.get_color())
        for ax in rows
        for ln in ax.lines
        if ln.get_gid().endswith(f" {lrs[3]:g}")
    }
    assert len(colour) == 1  # one learning rate, one colour in both rows
    assert figure.axes[2].get_ylim() == pytest.approx((lrs[0], lrs[-1]))


def test_many_equal_seeds_and_a_nan_metric_print_without_a_spread_or_a_crash():
    """30 seeds at one value: their rounded mean and std are not exact, the printed cell is (seeds
    equal), not a spread of rounding noise nor a log10(0); a nan test metric prints as nan."""
    from experiments.report.statistics import spread

    equal = spread([2.792641242468651] * 30)
    assert equal["std"] == 0 and equal["mean"] == 2.792641242468651
    noisy = spread([0.1, 0.1, 0.1])
    assert noisy == {"mean": 0.1, "std": 0.0, "ci95_low": 0.1, "ci95_high": 0.1}
    configs = [
        {
            "configuration": "c",
            "seeds": 30,
            "finished": 30,
            "diverged": 0,
            "stats": {"best val/loss": equal, "test/loss": spread([1.0, float("nan")])},
        }
    ]
    _, body = printed_configurations(configs)
    assert body[0][4:] == ["2.79264 (seeds equal)", "nan"]


def test_a_tie_counts_finished_seeds_and_names_the_diverged_ones(tmp_path: Path, capsys):
    comparison(
        tmp_path,
        {
            ("optimizer=sgd", "optimizer.lr=0.01"): [2.5] * 3,
            ("optimizer=adam", "optimizer.lr=0.1"): [2.5] * 2,
        },
    )
    write_job(tmp_path, ["optimizer=adam", "optimizer.lr=0.1"], 1e3, 2, "diverged")
    plan = json.loads((tmp_path / PLAN).read_text())
    plan["stage2"].append(",".join(sorted([*BASE, "optimizer=adam", "optimizer.lr=0.1", "seed=2"])))
    (tmp_path / PLAN).write_text(json.dumps(plan))
    sentence, _ = verdict_of(tmp_path, capsys)
    assert sentence == (
        "sgd at lr 0.01 and adam at lr 0.1 tie: all 5 of their finished seeds end at 2.5 (best "
        "val/loss; 1 more of adam at lr 0.1 diverged); there is nothing to tell apart."
    )


def test_a_stage_two_configuration_without_a_finished_seed_is_named(tmp_path: Path, capsys):
    """adam reached stage 2 and every one of its seeds diverged: sgd is not 'the only one that
    reached stage 2'."""
    comparison(tmp_path, {("optimizer=sgd", "optimizer.lr=0.01"): [2.0, 2.2]})
    for seed in (0, 1):
        write_job(tmp_path, ["optimizer=adam", "optimizer.lr=0.1"], 1e3, seed, "diverged")
    plan = json.loads((tmp_path / PLAN).read_text())
    adam = [
        ",".join(sorted([*BASE, "optimizer=adam", "optimizer.lr=0.1", f"seed={s}"])) for s in (0, 1)
    ]
    plan["stage1"].append({"overrides": ["optimizer=adam", "optimizer.lr=0.1"], "mean": 5.0})
    plan["stage2"] += adam
    (tmp_path / PLAN).write_text(json.dumps(plan))
    sentence, printed = verdict_of(tmp_path, capsys)
    assert "adam at lr 0.1 reached stage 2, but none of its seeds finished." in printed
    assert sentence.startswith(
        "sgd at lr 0.01: 2.10 ± 0.14 (best val/loss, mean ± std over 2 seeds)"
    )
    assert sentence.endswith("as it is the only configuration with a finished stage-2 seed.")


def test_one_job_outside_the_plan_is_one_job(tmp_path: Path, capsys):
    comparison(
        tmp_path,
        {
            ("optimizer=adam", "optimizer.lr=0.1"): [1.0, 1.1],
            ("optimizer=sgd", "optimizer.lr=0.01"): [2.0, 2.1],
        },
    )
    write_job(tmp_path, ["optimizer=adam", "optimizer.lr=0.1"], 9.0, 2)
    _, printed = verdict_of(tmp_path, capsys)
    assert "1 job in this folder is not in this comparison's plan" in printed


def test_seeds_two_float32_steps_apart_are_not_a_win(tmp_path: Path, capsys):
    """adam's and sgd's seeds all end at the least-squares fit, 2 float32 steps apart."""
    comparison(
        tmp_path,
        {
            ("optimizer=adam", "optimizer.lr=0.01"): [2.9276444911956787] * 3,
            ("optimizer=sgd", "optimizer.lr=0.01"): [2.927644968032837] * 3,
        },
    )
    sentence, _ = verdict_of(tmp_path, capsys)
    assert sentence.startswith(
        "adam at lr 0.01 and sgd at lr 0.01 end within float32 rounding of each other (2 float32 "
        "steps apart): 2.927644 against 2.927645 (best val/loss, mean over 3 seeds)"
    )
    assert "ahead" not in sentence


def test_a_sweep_logged_to_csv_has_its_curves_and_a_pasteable_tensorboard_line(
    tmp_path: Path, capsys
):
    """logger=csv: curves.png and the equal-seeds note read the jobs' metrics.csv; a sweep folder
    with a space prints a tensorboard command a shell takes as one path."""
    sweep = tmp_path / "a b"
    for seed in range(2):
        write_job(
            sweep,
            ["optimizer=adam", "optimizer.lr=0.1"],
            2.5,
            seed,
            curve=[9.0 + seed, 2.5],
            logger="csv",
        )
    summarize(sweep)
    printed = capsys.readouterr().out
    assert (sweep / "curves.png").is_file()
    assert "along different training curves" in printed
    assert f"tensorboard --logdir '{sweep}'" in printed


def test_paths_of_a_panel_name_the_other_setting_swept():
    trajectories = [
        trajectory(name=f"job{k}", others=f"adam scheduler={schedule}")
        for k, schedule in enumerate(["cosine", "none"])
    ]
    labels = [t.get_text() for t in paths_figure(trajectories).axes[0].get_legend().get_texts()]
    assert labels == ["lr=0.1, scheduler=cosine", "lr=0.1, scheduler=none"]


def test_holm_the_expected_best_and_p_better_on_their_edge_cases():
    """Holm counts only the pairs that have a test; a grid point that diverged is worse than any,
    and an expectation that could rest on it alone is None; ties count half."""
    import itertools
    import statistics

    from experiments.report.statistics import expected_best, holm, superiority, welch

    # m = 3 tests: 0.01 x 3, then 0.03 x 2 = 0.06, then 0.04 x 1 kept at 0.06 (monotone)
    assert holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    values = [1.0, None, 3.0, 2.0]
    assert expected_best(values, 1, lower_is_better=True) is None  # one draw may be the diverged
    for n in (2, 3, 4):
        subsets = itertools.combinations([1.0, float("inf"), 3.0, 2.0], n)
        assert expected_best(values, n, True) == pytest.approx(
            statistics.fmean(min(s) for s in subsets)
        )
    # higher is better: the diverged point is the worst one too
    assert expected_best([0.8, None, 0.9], 2, lower_is_better=False) == pytest.approx(
        (0.9 + 0.8 + 0.9) / 3
    )
    assert superiority([1.0, 2.0], [2.0, 3.0], lower_is_better=True) == (3 + 0.5) / 4
    assert superiority([1.0, 2.0], [2.0, 3.0], lower_is_better=False) == 0.5 / 4
    same = welch([1.0, 1.0], [1.0, 1.0])
    assert same["difference"] == 0 and same["p"] is None and same["low"] is None


def test_the_ranking_says_which_way_a_lower_row_is_told_apart_and_across_a_tie():
    """The table puts a configuration with a diverged seed last whatever its mean: where the
    lower row is told better, the chain says `<`; a pair told apart that only ≈ joins is named."""
    from experiments.report.protocol import ranking

    rows, configs = {}, []
    for name in ("adam", "sgd", "momentum", "rmsprop"):
        rows[name] = {"overrides": [f"optimizer={name}", "optimizer.lr=0.1"], "optimizer": name}
        configs.append({"jobs": [name], "configuration": f"optimizer={name}", "finished": 3})
    told = {
        ("adam", "sgd"): "not told apart",
        ("adam", "momentum"): "adam at lr 0.1 better",
        ("adam", "rmsprop"): "adam at lr 0.1 better",
        ("sgd", "momentum"): "not told apart",
        ("sgd", "rmsprop"): "no test",
        ("momentum", "rmsprop"): "rmsprop at lr 0.1 better",
    }
    found = [
        {"first": f"{a} at lr 0.1", "second": f"{b} at lr 0.1", "verdict": v}
        for (a, b), v in told.items()
    ]
    sentence = ranking(configs, found, rows)
    assert sentence.startswith(
        "What the seeds support: adam at lr 0.1 ≈ sgd at lr 0.1 ≈ momentum at lr 0.1 < rmsprop at lr 0.1 "
        "(≈: not told apart, as 3 of the 6 pairs are;"
    )
    assert sentence.endswith("; across the ≈, adam at lr 0.1 beats momentum at lr 0.1.")


def test_seconds_to_a_target_count_from_the_first_event_file_opened_whatever_its_name(
    tmp_path: Path,
):
    """A job of the basic launcher writes a second event file when it tests; `.10` sorts before
    `.9`, so the clock starts at the earliest first record of all the files, not the first name's."""
    import time

    from torch.utils.tensorboard import SummaryWriter

    from experiments.report.runs import opened_at, timed_scalars

    for counter, value in (("9", 3.0), ("10", 1.0)):  # training first, then testing
        with SummaryWriter(str(tmp_path / counter)) as writer:
            writer.add_scalar("val/loss", value, int(counter))
        (event,) = (tmp_path / counter).glob("events.out.tfevents.*")
        event.rename(tmp_path / f"events.out.tfevents.1.host.1.{counter}")
        time.sleep(0.05)
    first = opened_at(tmp_path)
    logged = timed_scalars(tmp_path, ["val/loss"], since_start=True)["val/loss"]
    assert all(seconds >= 0 for seconds, _ in logged.values())
    assert logged[9][0] < logged[10][0] and first < time.time()


def test_a_runs_logged_values_are_read_once_while_its_files_stay_as_they_are(tmp_path: Path):
    """A summary reads each job's event files for its curves and again for the time to a target:
    the second read is the first's, unless a file changed (a run still writing, or resumed) or
    another one appeared; then the new values are there."""
    from torch.utils.tensorboard import SummaryWriter

    from experiments.report.runs import read_logged, timed_scalars

    writer = SummaryWriter(str(tmp_path))
    writer.add_scalar("train/loss", 3.0, 1)
    writer.flush()
    before = read_logged.cache_info()
    assert timed_scalars(tmp_path, ["train/loss"])["train/loss"][1][1] == 3.0
    assert {1: 3.0} == {s: v for s, (_, v) in timed_scalars(tmp_path)["train/loss"].items()}
    after = read_logged.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    writer.add_scalar("train/loss", 2.0, 2)  # still writing
    writer.flush()
    assert sorted(timed_scalars(tmp_path)["train/loss"]) == [1, 2]
    writer.close()
    with SummaryWriter(str(tmp_path), filename_suffix=".resumed") as resumed:  # another file
        resumed.add_scalar("train/loss", 1.0, 3)
    assert timed_scalars(tmp_path)["train/loss"][3][1] == 1.0
    assert read_logged.cache_info().misses - after.misses == 2
