"""Sweeps: every job accounted for, failures recorded, a table and pictures at the end, one
HParams experiment in TensorBoard, parallel jobs equal to sequential ones."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import cli, job_dirs, read_metrics, scalar_history
from experiments.core.config import job_dir_name
from experiments.report.runs import collect
from experiments.report.tables import job_table, shown

SHORT = ["experiment=thermometer", "trainer.max_epochs=300", "trainer.check_val_every_n_epoch=100"]


def only_sweep(cwd: Path) -> Path:
    sweeps = list((cwd / "outputs" / "sweeps").iterdir())
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


@pytest.fixture(scope="module")
def optimizer_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The sweep=optimizers preset: 5 optimizers x 3 learning rates on the thermometer, shortened."""
    cwd = tmp_path_factory.mktemp("sweep")
    done = cli(["sweep=optimizers", *SHORT], cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return only_sweep(cwd), done.stdout


def test_all_15_jobs_run_each_in_a_directory_named_by_what_varies(optimizer_sweep):
    """Each job's folder (its run's name in TensorBoard) says what sets it apart, the optimizer
    and its learning rate; its metrics.json records every override."""
    sweep, _ = optimizer_sweep
    names = [p.relative_to(sweep).as_posix() for p in job_dirs(sweep)]
    assert len(names) == 15 and max(map(len, names)) <= 40
    assert {"adam,lr=0.01", "sgd,lr=0.1", "rmsprop,lr=0.001"} <= set(names)
    assert sorted(read_metrics(sweep / "adam,lr=0.01")["overrides"]) == [
        "experiment=thermometer",
        "optimizer.lr=0.01",
        "optimizer=adam",
        "sweep=optimizers",
        "trainer.check_val_every_n_epoch=100",
        "trainer.max_epochs=300",
    ]


def test_diverging_jobs_are_stopped_and_reported_while_the_sweep_goes_on(optimizer_sweep):
    sweep, _ = optimizer_sweep
    statuses = {
        (m["hparams"]["optimizer"], m["hparams"]["optimizer.lr"]): m
        for m in map(read_metrics, job_dirs(sweep))
    }
    for key in [("sgd", 0.1), ("momentum", 0.1)]:
        assert statuses[key]["status"] == "diverged"
        assert "train loss became" in statuses[key]["reason"] and statuses[key]["epochs"] < 300
    assert sum(m["status"] == "finished" for m in statuses.values()) == 13
    log = (sweep / "sgd,lr=0.1" / "train.log").read_text()
    assert "Diverged" in log


def test_a_diverged_run_shows_its_loss_up_to_where_it_diverged_and_a_status_scalar(
    optimizer_sweep,
):
    """In TensorBoard's Scalars tab: the diverged run's train/loss goes on to its last finite
    value, the step before its reason's step, and a status/diverged scalar marks where it stopped;
    a finished run has no status scalar."""
    sweep, _ = optimizer_sweep
    for job in job_dirs(sweep):
        record, history = read_metrics(job), scalar_history(job)
        if record["status"] == "finished":
            assert not [tag for tag in history if tag.startswith("status/")]
            continue
        step = int(re.search(r"step (\d+)", record["reason"])[1])  # counted from 1
        last_step, last = history["train/loss"][-1]
        assert last_step == step - 2 and math.isfinite(last) and last > 1e6
        assert history["status/diverged"] == [(record["epochs"], 1.0)]


def test_summary_table_lists_every_job_best_first_in_csv_md_and_print(optimizer_sweep):
    sweep, stdout = optimizer_sweep
    rows = list(csv.DictReader((sweep / "runs.csv").open()))
    assert len(rows) == 15
    assert set(rows[0]) >= {
        "job",
        "status",
        "best val/loss",
        "test/loss",
        "epochs",
        "wall_time_s",
        "reason",
    }
    finished = [float(r["best val/loss"]) for r in rows if r["status"] == "finished"]
    assert finished == sorted(finished) and len(finished) == 13
    assert [r["status"] for r in rows[-2:]] == ["diverged", "diverged"]
    assert all(r["reason"] for r in rows[-2:])
    markdown = (sweep / "runs.md").read_text().splitlines()
    assert len(markdown) == 2 + 15 and markdown[0].startswith("| job | status |")
    assert "15 jobs: 13 finished, 2 diverged" in stdout
    assert rows[0]["job"][:40] in stdout


def test_one_seed_per_configuration_gives_a_configuration_row_per_job(optimizer_sweep):
    sweep, stdout = optimizer_sweep
    configs = list(csv.DictReader((sweep / "summary.csv").open()))
    runs = list(csv.DictReader((sweep / "runs.csv").open()))
    assert len(configs) == 15 and all(c["seeds"] == "1" for c in configs)
    best = configs[0]["configuration"].split(",")
    assert len(best) == 2 and set(best) <= set(read_metrics(sweep / runs[0]["job"])["overrides"])
    assert configs[0]["best val/loss mean"] == runs[0]["best val/loss"]
    assert configs[0]["best val/loss std"] == "" and "configurations, mean ±" not in stdout
    assert [c["diverged"] for c in configs[-2:]] == ["1", "1"]


@pytest.fixture(scope="module")
def seed_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Three seeds of two optimizers on the default experiment (the seed draws its data, split,
    start and batch order)."""
    tmp_path = tmp_path_factory.mktemp("seeds")
    done = cli(
        ["-m", "optimizer=sgd,adam", "optimizer.lr=0.05", "seed=0,1,2", "trainer.max_epochs=3"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return only_sweep(tmp_path), done.stdout


# Student's t as tables print it: scipy.stats.t.ppf(0.975, 2)
T_975_DF2 = 4.302652729749464


def t_density(t: float, df: float):
    import mpmath

    return (
        mpmath.gamma((df + 1) / 2)
        / (mpmath.sqrt(df * mpmath.pi) * mpmath.gamma(df / 2))
        * (1 + t * t / df) ** (-(df + 1) / 2)
    )


def welch_p_by_quadrature(a: list[float], b: list[float]) -> float:
    """Welch's two-sided p-value by integrating the t density: another road than the package's
    incomplete beta function (experiments.report.comparison.welch_p)."""
    import mpmath

    va, vb = (statistics.variance(x) / len(x) for x in (a, b))
    t = abs(statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(2 * mpmath.quad(lambda s: t_density(s, df), [t, mpmath.inf]))


def test_the_t_quantile_and_welchs_p_value_agree_with_the_t_density():
    """The package's Student t (mpmath's incomplete beta function, no scipy) against quadrature
    of the density and the tables' 4.3027 for 95% with two degrees of freedom."""
    import mpmath

    from experiments.report.statistics import t_quantile, welch_p

    assert t_quantile(0.975, 2) == pytest.approx(T_975_DF2, rel=1e-14)
    for df in (1, 2, 4, 9, 29, 7.3):
        t = t_quantile(0.975, df)
        below = mpmath.quad(lambda s: t_density(s, df), [-mpmath.inf, 0, t])
        assert float(below) == pytest.approx(0.975, rel=1e-12)
    # scipy.stats.ttest_ind(a, b, equal_var=False).pvalue, scipy 1.17.1
    for a, b, scipys in [
        ([2.9, 3.1, 3.0], [3.4, 3.9, 3.6], 0.034932368723705934),
        ([1.0, 1.5, 0.7, 1.2, 1.1], [1.3, 0.9, 1.8], 0.48091836456603004),
        ([5.0, 5.0, 5.0], [4.0, 6.0, 5.5, 4.5], 1.0),  # one sample without spread
        ([0.1] * 3, [0.3, 0.2, 0.25], 0.03509871864598465),
    ]:
        assert welch_p(a, b) == pytest.approx(scipys, rel=1e-12)
        assert welch_p(a, b) == pytest.approx(welch_p_by_quadrature(a, b), rel=1e-10)
    # seeds that ended identically: no t-test, though their rounded std is not 0
    assert math.isnan(welch_p([0.1] * 3, [0.1] * 3))


def test_the_verdict_on_seeds_that_ended_identically_is_no_t_test():
    """0.1 three times: a std of 0 (the rounded formula gives 1.7e-17), no t-test, no crash."""
    from experiments.report.comparison import verdict
    from experiments.report.runs import configurations

    rows = [
        {
            "job": f"{name},seed={seed}",
            "overrides": [f"optimizer={name}", "optimizer.lr=0.1", f"seed={seed}"],
            "hparams": {"seed": seed},
            "status": "finished",
            "monitor": "val/loss",
            "mode": "min",
            "best": best,
            "test": {},
        }
        for name, best in (("adam", 0.1), ("sgd", 0.3))
        for seed in (1, 2, 3)
    ]
    first, second = configurations(rows)
    # equal values have a spread of exactly 0, though their rounded mean is 0.10000000000000002
    assert first["stats"]["best val/loss"]["std"] == 0
    assert first["stats"]["best val/loss"]["mean"] == 0.1
    sentence = verdict(first, second, {row["job"]: row for row in rows})
    assert sentence.endswith(
        "better in 3 of 3 seeds; no t-test (the seeds of each ended identically)."
    )
    assert sentence.startswith("adam at lr 0.1 comes out ahead of sgd at lr 0.1")


def test_seeds_of_a_configuration_are_replicates_with_mean_std_and_t_interval(seed_sweep):
    """Three seeds of two optimizers: two rows, their numbers recomputed from the jobs' metrics.json."""
    sweep, stdout = seed_sweep
    jobs = [read_metrics(job) for job in job_dirs(sweep)]
    assert len(jobs) == 6 and {m["status"] for m in jobs} == {"finished"}
    configs = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [c["configuration"] for c in configs] == sorted(
        ["optimizer=sgd", "optimizer=adam"],
        key=lambda name: sum(
            m["monitor"]["best"] for m in jobs if m["hparams"]["optimizer"] in name
        ),
    )
    for config in configs:
        mine = [
            m for m in jobs if f"optimizer={m['hparams']['optimizer']}" == config["configuration"]
        ]
        assert config["seeds"] == config["finished"] == "3" and len(mine) == 3
        for name, values in [
            ("best val/loss", [m["monitor"]["best"] for m in mine]),
            ("test/loss", [m["test"]["test/loss"] for m in mine]),
        ]:
            mean = sum(values) / 3
            std = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5
            half = T_975_DF2 * std / 3**0.5
            assert std > 0, values  # the seed changes the data, split, start and batch order
            for part, value in [
                ("mean", mean),
                ("std", std),
                ("ci95_low", mean - half),
                ("ci95_high", mean + half),
            ]:
                assert float(config[f"{name} {part}"]) == pytest.approx(value, rel=1e-5), (
                    name,
                    part,
                )
        printed = next(
            line for line in stdout.splitlines() if config["configuration"] in line and "±" in line
        )
        mean, half = (float(x) for x in printed.split("│")[5].split("±"))  # best val/loss
        truth = float(config["best val/loss mean"])
        assert half == pytest.approx(float(config["best val/loss ci95_high"]) - truth, rel=0.05)
        assert abs(mean - truth) <= half / 10
    assert "6 jobs: 6 finished; 2 configurations" in stdout
    assert len(list(csv.DictReader((sweep / "runs.csv").open()))) == 6


def test_seeds_that_end_identically_are_said_to_instead_of_a_spread_of_zero(tmp_path: Path, capsys):
    """The thermometer's seeds start from w = 1, b = 0 on one fixed batch: its runs end identically."""
    from experiments.report.summary import summarize

    for seed in (0, 1):
        job = tmp_path / f"experiment=thermometer,seed={seed}"
        job.mkdir()
        record = {
            "status": "finished",
            "overrides": ["experiment=thermometer", f"seed={seed}"],
            "monitor": {"name": "val/loss", "mode": "min", "best": 12.6315},
            "metrics": {"val/loss": {"final": 12.6315}},
            "test": {"test/loss": 11.5},
            "hparams": {"experiment": "thermometer", "seed": seed},
        }
        (job / "metrics.json").write_text(json.dumps(record))
    summarize(tmp_path)
    out = capsys.readouterr().out
    assert "12.6315 (seeds equal)" in out and "12.6315 ±" not in out
    # no event files here to say whether the runs differed (tests/test_comparison.py has both)
    assert "The seeds of 1 configuration ended at identical values (with no TensorBoard" in out
    assert "changes nothing" not in out
    (config,) = csv.DictReader((tmp_path / "summary.csv").open())
    assert config["configuration"] == "experiment=thermometer" and config["seeds"] == "2"
    assert float(config["best val/loss std"]) == 0


def test_the_pictures_of_a_sweep_with_seeds_plot_the_means_over_seeds(seed_sweep):
    """summary.png's lines are the means over seeds of the best val/loss; curves.png's lines the
    means of the seeds' logged curves, as TensorBoard's reader reads them; both are also images of
    the sweep's TensorBoard run."""
    from experiments.report.figures import curves_figure, sweep_figure
    from experiments.report.runs import configurations, learning_curves

    sweep, _ = seed_sweep
    rows = collect(sweep)
    jobs = {row["job"]: row for row in rows}
    figure = sweep_figure(rows, "val/loss")
    for name in ("sgd", "adam"):
        line = next(ln for ln in figure.axes[0].lines if ln.get_gid() == f"mean:{name}")
        best = [r["best"] for r in rows if r["optimizer"] == name]
        assert list(line.get_xdata()) == [0.05] and len(best) == 3
        assert line.get_ydata()[0] == pytest.approx(sum(best) / 3, rel=1e-12)
        dots = next(c for c in figure.axes[0].collections if c.get_gid() == f"seeds:{name}")
        assert sorted(dots.get_offsets()[:, 1]) == pytest.approx(sorted(best))
    configs = configurations(rows)
    curves = learning_curves(sweep, configs, ["train/loss", "val/loss"])
    figure = curves_figure(curves, ["train/loss", "val/loss"])
    for config in configs:
        histories = [scalar_history(sweep / job)["val/loss"] for job in config["jobs"]]
        steps = [step for step, _ in histories[0]]
        assert all([s for s, _ in h] == steps for h in histories) and len(steps) == 3
        expected = [sum(h[k][1] for h in histories) / 3 for k in range(len(steps))]
        line = next(
            ln for ln in figure.axes[1].lines if ln.get_gid() == f"mean:{config['configuration']}"
        )
        assert list(line.get_xdata()) == steps
        assert list(line.get_ydata()) == pytest.approx(expected, rel=1e-6)
        assert jobs[config["jobs"][0]]["status"] == "finished"
    for name in ("summary.png", "curves.png"):
        assert matplotlib.image.imread(sweep / name).shape[1] > 500
    events = EventAccumulator(str(sweep / ".sweep"), size_guidance={"images": 0})
    events.Reload()
    assert {"sweep/summary", "sweep/curves"} <= set(events.Tags()["images"])


def test_many_learning_rates_of_one_optimizer_are_coloured_by_learning_rate_not_listed():
    """Past ten lines of one optimizer a legend repeats its ten colours: curves.png and paths.png
    colour each line by its learning rate on a log scale, with a colorbar; several optimizers (or
    other settings) get a row each in curves.png; few lines, or one learning rate, keep the
    legend."""
    from matplotlib.colors import to_rgba

    from experiments.report.figures import curves_figure, paths_figure

    def curves(lrs, optimizers, momenta=None):
        return [
            {
                "name": f"optimizer={o},optimizer.lr={lr:g}",
                "lr": lr,
                "others": (o, f"optimizer.momentum={momenta[k]}" if momenta else ""),
                "curves": {
                    "train/loss": {
                        "steps": [0, 1],
                        "mean": [2.0, 1.0 / (1 + k)],
                        "low": [2.0, 1.0],
                        "high": [2.0, 1.0],
                        "runs": [{}],
                        "diverged": [],
                    }
                },
            }
            for k, (lr, o) in enumerate(zip(lrs, optimizers))
        ]

    lrs = [10 ** (-3 + 2 * k / 11) for k in range(12)]
    figure = curves_figure(curves(lrs, ["adam"] * 12), ["train/loss"])
    assert not figure.legends and len(figure.axes) == 2  # the panel and its colorbar
    bar = figure.axes[1]
    assert bar.get_ylim() == pytest.approx((1e-3, 1e-1))
    colours = [to_rgba(line.get_color()) for line in figure.axes[0].lines]
    assert len(set(colours)) == 12 and colours[0] != colours[-1]
    # several optimizers, or another setting swept as well: a row of panels each
    for rows, grouped in (
        (2, curves(lrs, ["adam", "sgd"] * 6)),
        (4, curves(lrs[:3] * 4, ["sgd"] * 12, [0.5, 0.9, 0.95, 0.99] * 3)),
    ):
        figure = curves_figure(grouped, ["train/loss"])
        assert not figure.legends and len(figure.axes) == rows + 1
    # a legend where the learning rate does not tell the lines apart: few lines, or one
    # learning rate for all
    for few in (
        curves(lrs[:10], ["sgd"] * 10),
        curves([0.01] * 12, ["sgd"] * 12, [m / 20 for m in range(12)]),
    ):
        figure = curves_figure(few, ["train/loss"])
        assert len(figure.axes) == 1 and len(figure.legends[0].get_texts()) == len(few)

    path = {"x": [0.0, 1.0, 2.0], "y": [1.0, 3.0, 5.0], "w": [0.0, 1.0], "b": [0.0, 0.5]}
    trajectories = [
        {**path, "name": f"job{k}", "optimizer": "adam", "lr": lr, "status": "finished"}
        for k, lr in enumerate(lrs + lrs)  # two seeds of each learning rate
    ]
    for t in trajectories:
        t["others"] = ("adam",)
    figure = paths_figure(trajectories)
    assert figure.axes[0].get_legend() is None and len(figure.axes) == 2
    figure = paths_figure(trajectories[:10])
    assert len(figure.axes[0].get_legend().get_texts()) == 10
    trajectories[0]["others"] = ("adam", "optimizer.weight_decay=0.1")
    assert paths_figure(trajectories).axes[0].get_legend() is not None


def test_sweep_pictures_are_written(optimizer_sweep):
    sweep, _ = optimizer_sweep
    for name in ("summary.png", "paths.png"):
        image = matplotlib.image.imread(sweep / name)
        assert image.shape[0] > 300 and image.shape[1] > 500
        assert image.std() > 0.05  # not a blank canvas


def test_each_job_records_its_parameter_path(optimizer_sweep):
    sweep, _ = optimizer_sweep
    trajectory = json.loads((job_dirs(sweep)[0] / "trajectory.json").read_text())
    assert trajectory["w"][0] == 1.0 and trajectory["b"][0] == 0.0  # the tutorial's start
    assert trajectory["steps"][-1] == 300 and len(trajectory["steps"]) <= 501
    assert len(trajectory["x"]) == len(trajectory["y"]) == 11


def hparams_records(sweep: Path) -> tuple[set[str], dict, dict]:
    """The sweep's runs as TensorBoard's multiplexer reads them, and their HParams records: each
    run's session start, and the experiments by run."""
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(sweep))
    multiplexer.Reload()
    sessions, experiments = {}, {}
    for run, tags in multiplexer.PluginRunToTagToContent("hparams").items():
        for data in tags.values():
            parsed = plugin_data_pb2.HParamsPluginData.FromString(data)
            if parsed.HasField("session_start_info"):
                sessions[run] = parsed.session_start_info
            if parsed.HasField("experiment"):
                experiments[run] = parsed.experiment
    return set(multiplexer.Runs()), sessions, experiments


def test_tensorboard_shows_every_job_as_a_run_with_the_same_hparams_and_real_metrics(
    optimizer_sweep,
):
    sweep, _ = optimizer_sweep
    runs, sessions, experiments = hparams_records(sweep)
    job_names = {p.name for p in job_dirs(sweep)}
    assert job_names <= runs
    assert set(sessions) == job_names
    key_sets = {frozenset(s.hparams) for s in sessions.values()}
    assert len(key_sets) == 1 and {
        "optimizer",
        "optimizer.lr",
        "optimizer.momentum",
        "optimizer.betas",
        "batch_size",
    } <= next(iter(key_sets))
    adam = next(s for run, s in sessions.items() if run.startswith("adam,"))
    assert adam.hparams["optimizer.momentum"].number_value == 0.0  # neutral, not dropped
    # one experiment for the whole table, in the sweep's own run (no run named ".")
    assert list(experiments) == [".sweep"] and "." not in runs
    assert {m.name.tag for m in experiments[".sweep"].metric_infos} == {
        "best/val_loss",
        "test/loss",
    }
    assert {h.name for h in experiments[".sweep"].hparam_infos} == set(next(iter(key_sets)))
    finished_run = "adam,lr=0.01"
    accumulator = EventAccumulator(str(sweep / finished_run))
    accumulator.Reload()
    best = accumulator.Scalars("best/val_loss")[-1].value
    assert best == pytest.approx(read_metrics(sweep / finished_run)["monitor"]["best"], rel=1e-5)


def test_the_hparams_table_marks_every_setting_that_differs_between_runs(optimizer_sweep):
    """TensorBoard picks the HParams table's default columns by `differs` (the first five marked,
    by name) and tags those columns `differs` in its runs table: marked are exactly the keys whose
    value differs between runs, those swept, how each run ended, and those that differ because of
    them (Adam's betas against SGD's empty value), as TensorBoard computes it from the runs."""
    sweep, _ = optimizer_sweep
    _, sessions, experiments = hparams_records(sweep)
    (experiment,) = experiments.values()
    infos = list(experiment.hparam_infos)
    differing = {
        name
        for name in sessions[next(iter(sessions))].hparams
        if len({str(start.hparams[name]) for start in sessions.values()}) > 1
    }
    assert {
        "optimizer",
        "optimizer.lr",
        "status",
        "optimizer.betas",
        "optimizer.momentum",
    } <= differing
    assert {i.name for i in infos if i.differs} == differing and len(infos) > len(differing) + 10
    status = next(i for i in infos if i.name == "status")
    assert sorted(v.string_value for v in status.domain_discrete.values) == ["diverged", "finished"]
    ended = [start.hparams["status"].string_value for start in sessions.values()]
    assert sorted(ended).count("diverged") == 2 and ended.count("finished") == 13


@pytest.mark.slow  # joblib's worker processes
def test_parallel_launcher_gives_the_sequential_results(optimizer_sweep, tmp_path: Path):
    sweep, _ = optimizer_sweep
    done = cli(
        [
            "-m",
            "hydra/launcher=parallel",
            "hydra.launcher.n_jobs=2",
            *SHORT,
            "optimizer=adagrad,adam",
            "optimizer.lr=0.01,0.1",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    parallel = {
        (m["hparams"]["optimizer"], m["hparams"]["optimizer.lr"]): m
        for m in map(read_metrics, job_dirs(only_sweep(tmp_path)))
    }
    sequential = {
        (m["hparams"]["optimizer"], m["hparams"]["optimizer.lr"]): m
        for m in map(read_metrics, job_dirs(sweep))
    }
    assert len(parallel) == 4
    for key, metrics in parallel.items():
        assert metrics["parameters"] == sequential[key]["parameters"]
        assert metrics["monitor"]["best"] == sequential[key]["monitor"]["best"]


def test_a_failing_job_is_recorded_with_its_reason_and_the_sweep_goes_on(tmp_path: Path):
    stop = [
        "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping",
        "+callbacks.stop.monitor=val/loss,nonexistent",
    ]
    done = cli(["-m", *SHORT, *stop, "monitor=val/loss,val/acc"], tmp_path)
    assert done.returncode == 1  # some job failed: the sweep says so once it has finished
    results = {
        tuple(sorted(o for o in m["overrides"] if "monitor" in o)): m
        for m in map(read_metrics, job_dirs(only_sweep(tmp_path)))
    }
    assert len(results) == 4
    assert results["+callbacks.stop.monitor=val/loss", "monitor=val/loss"]["status"] == "finished"
    raised = results["+callbacks.stop.monitor=nonexistent", "monitor=val/loss"]
    assert (
        raised["status"] == "failed"
        and "RuntimeError: Early stopping conditioned on metric `nonexistent`" in raised["reason"]
    )
    refused = results["+callbacks.stop.monitor=val/loss", "monitor=val/acc"]
    assert refused["status"] == "failed" and "monitor=val/acc" in refused["reason"]
    assert "Traceback" in (Path(raised["run_dir"]) / "train.log").read_text()
    assert "4 jobs: 1 finished, 3 failed" in done.stdout
    # a value outside its domain in any job refuses the sweep before it writes anything
    refused = cli(["-m", *SHORT, "data.batch_size=null,0", "hydra.sweep.dir=refused"], tmp_path)
    assert refused.returncode == 1 and refused.stderr == (
        "error: data.batch_size must be a positive integer or null (the whole split as one batch), got 0.\n"
    )
    assert not (tmp_path / "refused").exists()


def test_fail_fast_stops_the_sweep_at_the_first_failure(tmp_path: Path):
    stop = [
        "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping",
        "+callbacks.stop.monitor=nonexistent,val/loss",
    ]
    done = cli(["-m", *SHORT, *stop, "fail_fast=true"], tmp_path)
    assert done.returncode == 1
    assert "Early stopping conditioned on metric `nonexistent`" in done.stdout + done.stderr
    assert (
        len(job_dirs(only_sweep(tmp_path))) == 1
        and not (only_sweep(tmp_path) / "summary.csv").exists()
    )


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path: Path):
    command = [sys.executable, "-m", "experiments.train", "trainer.max_epochs=1"]
    processes = [
        subprocess.Popen(
            command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(2)
    ]
    assert [p.wait(timeout=300) for p in processes] == [0, 0]
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 2 and all((run / "metrics.json").is_file() for run in runs)


def test_job_directory_names_are_one_safe_path_component():
    assert job_dir_name("optimizer=adam,optimizer.lr=0.01", 3) == "optimizer=adam,optimizer.lr=0.01"
    assert job_dir_name("", 3) == "job3"
    assert "/" not in job_dir_name("+callbacks.stop.monitor=val/loss", 0)
    long = job_dir_name("x=" + "a" * 400, 0)
    assert len(long) < 200 and long != job_dir_name("x=" + "a" * 399 + "b", 0)


def write_job(folder: Path, status: str, best: float | None, reason: str = "") -> None:
    folder.mkdir(parents=True)
    metrics = {
        "status": status,
        "reason": reason,
        "epochs": 10,
        "wall_time_s": 1.0,
        "monitor": {"name": "val/loss", "mode": "min", "best": best},
        "metrics": {},
        "test": {"test/loss": best} if best else {},
        "hparams": {"optimizer": "sgd", "optimizer.lr": 0.1},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_a_sweep_run_again_finds_its_jobs_by_their_overrides_whatever_their_folders_are_called(
    tmp_path: Path,
):
    """A job's folder is a short name of what varies; a sweep run again finds each job that ran
    by the overrides its metrics.json records: after a fixed value became a swept one (the names
    grow), and in a folder named as an older version named it. Not a byte of them changes. A fixed
    value changed makes other jobs, in folders that say what sets them apart."""
    sweep = tmp_path / "sweep"
    base = ["-m", *SHORT, "optimizer=sgd,adam", f"hydra.sweep.dir={sweep}"]
    assert cli([*base, "optimizer.lr=0.01", "seed=0"], tmp_path).returncode == 0
    assert [p.name for p in job_dirs(sweep)] == ["adam", "sgd"]
    done = cli([*base, "optimizer.lr=0.01", "seed=1"], tmp_path)
    assert done.returncode == 0 and "already have a final result" not in done.stdout + done.stderr
    assert [p.name for p in job_dirs(sweep)] == ["adam", "adam,seed=1", "sgd", "sgd,seed=1"]
    assert [read_metrics(sweep / n)["hparams"]["seed"] for n in ("adam", "adam,seed=1")] == [0, 1]
    older = "experiment=thermometer,optimizer.lr=0.01,optimizer=sgd,seed=0,trainer.check_val_every_n_epoch=100,trainer.max_epochs=300"
    (sweep / "sgd").rename(sweep / older)
    before = {job: folder_bytes(job) for job in job_dirs(sweep)}
    done = cli([*base, "optimizer.lr=0.01,0.1", "seed=0"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "2 of 4 jobs already have a final result" in done.stdout + done.stderr
    assert {job: folder_bytes(job) for job in before} == before
    assert sorted(p.name for p in job_dirs(sweep)) == sorted(
        ["adam", "adam,lr=0.1", "adam,seed=1", older, "sgd,lr=0.1", "sgd,seed=1"]
    )


def test_collect_orders_best_first_then_diverged_then_failed(tmp_path: Path):
    write_job(tmp_path / "b", "finished", 2.0)
    write_job(tmp_path / "c", "failed", None, "ValueError: boom")
    write_job(tmp_path / "a", "finished", 3.0)
    write_job(tmp_path / "d", "diverged", None, "train loss became nan")
    rows = collect(tmp_path)
    assert [r["job"] for r in rows] == ["b", "a", "d", "c"]
    header, body = job_table(rows)
    assert header == [
        "job",
        "status",
        "best val/loss",
        "test/loss",
        "epochs",
        "wall_time_s",
        "reason",
    ]
    assert shown(body)[0][:4] == ["b", "finished", "2", "2"] and body[-1][-1] == "ValueError: boom"


COMPARE = [
    "experiment=thermometer",
    "sweep=compare",
    "optimizer=sgd,adam,momentum",
    "optimizer.lr=1e-3,1e-2,1e-1",
    "hydra.sweeper.seeds=4",
    "seed=5",  # the first seed: studies with seeds 5, 6 and 7; stage 2 with 5, 6, 7 and 8
    "trainer.max_epochs=300",
    "trainer.check_val_every_n_epoch=100",
]
DEFAULT_LR = {"sgd": 0.01, "adam": 0.001, "momentum": 0.01}  # conf/optimizer/


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """sweep=compare on the thermometer, shortened: 3 optimizers x 3 learning rates searched by 3
    studies, then each optimizer's chosen learning rate and its default one with 4 seeds; then the
    same command into the same directory."""
    cwd = tmp_path_factory.mktemp("compare")
    done = cli(COMPARE, cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = only_sweep(cwd)
    before = {job: folder_bytes(job) for job in job_dirs(sweep)}
    again = cli([*COMPARE, f"hydra.sweep.dir={sweep}"], cwd, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    untouched = before == {job: folder_bytes(job) for job in job_dirs(sweep)}
    return sweep, done.stdout + done.stderr, again.stdout + again.stderr, untouched


def compare_jobs(sweep: Path) -> dict[str, dict]:
    return {p.relative_to(sweep).as_posix(): read_metrics(p) for p in job_dirs(sweep)}


def studies_picks(jobs: dict[str, dict]) -> dict[str, list[float]]:
    """Each study's pick per optimizer, recomputed: the learning rate of its finished stage-1 job
    (one seed per study) with the lowest best val/loss."""
    picks: dict[str, list[float]] = {}
    for seed in (5, 6, 7):
        for name in ("sgd", "adam", "momentum"):
            finished = [
                m
                for job, m in jobs.items()
                if job.startswith("stage1/")
                and m["hparams"]["seed"] == seed
                and m["hparams"]["optimizer"] == name
                and m["status"] == "finished"
            ]
            best = min(finished, key=lambda m: m["monitor"]["best"])
            picks.setdefault(name, []).append(best["hparams"]["optimizer.lr"])
    return picks


@pytest.mark.slow  # sweep=compare: two stages of jobs
def test_compare_reruns_the_point_most_studies_picked_and_each_default_with_its_seeds(comparison):
    """Stage 1: the 9-point grid searched by 3 studies (seeds 5, 6, 7), every seed from a random
    start; stage 2: the point most studies picked for each optimizer, and each optimizer at its
    default learning rate, with seeds 5 to 8, the studies' jobs among them."""
    sweep, output, _, _ = comparison
    jobs = compare_jobs(sweep)
    # each run's name says its stage, optimizer, learning rate and seed, in 40 characters
    for name, m in jobs.items():
        lr, seed = m["hparams"]["optimizer.lr"], m["hparams"]["seed"]
        stage = name.split("/")[0]
        assert (stage == "stage1") == (seed in (5, 6, 7)), name
        assert name == f"{stage}/{m['hparams']['optimizer']},lr={lr:g},seed={seed}", name
        assert len(name) <= 40
    assert all("model.init_weight=null" in m["overrides"] for m in jobs.values())
    assert "random initialisation (model.init_weight=null model.init_bias=null)" in output
    assert "stage 1: 3 studies of 9 grid points x 1 seed = 27 jobs" in output
    stage_one = [m for job, m in jobs.items() if job.startswith("stage1/")]
    assert len(stage_one) == 27 and any(m["status"] == "diverged" for m in stage_one)
    plan = json.loads((sweep / "compare.json").read_text())
    assert plan["studies"] == [[5], [6], [7]] and plan["seeds"] == [5, 6, 7, 8]
    chosen = {
        name: float(o.split("=")[1])
        for name, point in plan["chosen"].items()
        for o in point
        if o.startswith("optimizer.lr=")
    }
    for name, picked in studies_picks(jobs).items():
        assert [
            float(next(o for o in point if o.startswith("optimizer.lr=")).split("=")[1])
            for point in plan["picks"][name]
        ] == picked
        assert chosen[name] == statistics.mode(picked)  # one pick is a tie broken by the mean
    stage_two = {
        job
        for job, m in jobs.items()
        if chosen[m["hparams"]["optimizer"]] == m["hparams"]["optimizer.lr"]
    }
    assert sorted(plan["stage2"]) == sorted(stage_two)
    for name, baseline in plan["baselines"].items():
        runs = [jobs[job] for job in baseline["jobs"]]
        assert {m["hparams"]["optimizer.lr"] for m in runs} == {DEFAULT_LR[name]}
        assert sorted(m["hparams"]["seed"] for m in runs) == [5, 6, 7, 8]
    # every job of the sweep is in the plan: stage 1, stage 2 or a default
    planned = {*plan["stage1_jobs"], *plan["stage2"]}
    planned |= {j for b in plan["baselines"].values() for j in b["jobs"]}
    assert planned == set(jobs)


@pytest.mark.slow  # sweep=compare: two stages of jobs
def test_the_dashboard_holds_each_stage_two_configurations_mean_and_band_and_the_pictures(
    comparison,
):
    """`tensorboard --logdir <sweep>/dashboard`: a run per stage-2 configuration whose
    <tag>/mean, /lower and /upper are the mean, min and max of its finished seeds' own curves at
    the steps they all logged (recomputed here from the jobs' event files), a margin chart per tag,
    and the sweep's pictures; few runs, so TensorBoard selects every one when it opens."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    sweep, output, _, _ = comparison
    dashboard = sweep / "dashboard"
    plan = json.loads((sweep / "compare.json").read_text())
    configurations: dict[str, list[dict]] = {}
    for job in plan["stage2"]:
        hparams = read_metrics(sweep / job)["hparams"]
        name = f"{hparams['optimizer']},lr={hparams['optimizer.lr']:g}"
        configurations.setdefault(name, []).append(sweep / job)
    assert len(configurations) == 3 and all(len(j) == 4 for j in configurations.values())
    assert sorted(p.name for p in dashboard.iterdir()) == sorted([*configurations, "sweep"])
    for name, jobs in configurations.items():
        band = scalar_history(dashboard / name)
        assert all(read_metrics(job)["status"] == "finished" for job in jobs)
        for tag in ("train/loss", "val/loss"):
            seeds = [dict(scalar_history(job)[tag]) for job in jobs]
            steps = sorted(set.intersection(*(set(seed) for seed in seeds)))
            assert len(steps) > 1 and [s for s, _ in band[f"{tag}/mean"]] == steps
            for part, combine in (("mean", statistics.fmean), ("lower", min), ("upper", max)):
                expected = [combine(seed[s] for seed in seeds) for s in steps]
                assert [v for _, v in band[f"{tag}/{part}"]] == pytest.approx(expected, rel=1e-6)
    pictures = EventAccumulator(str(dashboard / "sweep"), size_guidance={"tensors": 0})
    pictures.Reload()
    assert {"sweep/summary", "sweep/curves", "sweep/paths", "sweep/tuning"} <= set(
        pictures.Tags()["images"]
    )
    layout = layout_pb2.Layout.FromString(
        pictures.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    )
    margins = {
        tuple(s.value for s in chart.margin.series)
        for category in layout.category
        for chart in category.chart
    }
    assert ("train/loss/mean",) in {m[:1] for m in margins} and ("val/loss/mean",) in {
        m[:1] for m in margins
    }
    assert f"tensorboard --logdir outputs/sweeps/{sweep.name}/dashboard " in output


@pytest.mark.slow  # sweep=compare: two stages of jobs
def test_every_picture_of_a_sweep_gives_a_configuration_one_colour(comparison):
    """summary.png and curves.png colour a line (an optimizer with its other settings) from one
    map: a stage-2 configuration has the same colour in both, each line its own; paths.png, whose
    panels here hold 13 paths each and so are coloured by learning rate, gives each configuration
    one colour too. Steps whose last is 30 times their first get a log axis."""
    from matplotlib.colors import to_rgba

    from experiments.report.figures import log_steps
    from experiments.report.pictures import sweep_figures
    from experiments.report.runs import configuration_names, line_names, read_sweep

    sweep = comparison[0]
    report = read_sweep(sweep)
    figures = sweep_figures(sweep, report.jobs, report.stage_two)

    def colours(figure, prefix: str) -> dict[str, set]:
        found: dict[str, set] = {}
        for ax in figure.axes:
            for line in ax.get_lines():
                if (gid := line.get_gid() or "").startswith(prefix):
                    found.setdefault(gid.removeprefix(prefix), set()).add(to_rgba(line.get_color()))
        return found

    summary = colours(figures["summary.png"], "mean:")  # by line
    curves = colours(figures["curves.png"], "mean:")  # by configuration
    paths = colours(figures["paths.png"], "path:")  # by job
    lines = line_names(report.rows)
    assert sorted(summary) == ["adam", "momentum", "sgd"]
    assert (
        all(len(c) == 1 for c in summary.values())
        and len(set(map(frozenset, summary.values()))) == 3
    )
    names = configuration_names(report.stage_two, {r["job"]: r for r in report.rows})
    assert sorted(curves) == sorted(names)  # adam,lr=0.1: the legend's names, the dashboard's
    for config, name in zip(report.stage_two, names):
        colour = summary[lines[config["jobs"][0]]]
        assert curves[name] == colour
        # a panel of many paths colours them by learning rate: still one colour per configuration
        assert len({frozenset(paths[job]) for job in config["jobs"]}) == 1
    assert log_steps([0, 10, 20, 5000]) and not log_steps([860, 1720, 8600])


def stage_two_bests(sweep: Path, plan: dict) -> dict[str, dict[int, float]]:
    """Each tuned optimizer's finished stage-2 seeds' best val/loss, by seed, in the table's order."""
    finals: dict[str, dict[int, float]] = {name: {} for name in plan["chosen"]}
    for job in plan["stage2"]:
        m = read_metrics(sweep / job)
        if m["status"] == "finished":
            finals[m["hparams"]["optimizer"]][m["hparams"]["seed"]] = m["monitor"]["best"]
    return dict(sorted(finals.items(), key=lambda kv: statistics.fmean(kv[1].values())))


def holm_by_hand(ps: list[float]) -> list[float]:
    """Holm (1979) as its paper states it: the i-th smallest p times (m - i + 1), kept monotone."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adjusted, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


@pytest.mark.slow  # sweep=compare: two stages of jobs
def test_compare_ends_with_the_stage_two_table_and_a_welch_sentence_recomputed_from_the_jobs(
    comparison,
):
    sweep, output, _, _ = comparison
    plan = json.loads((sweep / "compare.json").read_text())
    finals = stage_two_bests(sweep, plan)
    names = list(finals)
    (first, a), (second, b) = list(finals.items())[:2]
    assert min(map(statistics.stdev, (a.values(), b.values()))) > 0  # the seeds differ
    lr = {
        name: next(p.split("=")[1] for p in point if p.startswith("optimizer.lr="))
        for name, point in plan["chosen"].items()
    }
    wins = sum(a[s] < b[s] for s in a)
    ps = [
        welch_p_by_quadrature(list(finals[x].values()), list(finals[y].values()))
        for i, x in enumerate(names)
        for y in names[i + 1 :]
    ]
    p, holm = ps[0], holm_by_hand(ps)[0]
    sentence = (sweep / "comparison.md").read_text().strip().splitlines()[-1]
    verb = "beats" if holm < 0.05 else "and"
    assert sentence.startswith(f"{first} at lr {lr[first]} {verb} {second} at lr {lr[second]}")
    assert (
        f"better in {wins} of 4 seeds, p = {p:.2g} (Welch's t-test; {holm:.2g} after Holm's "
        "correction for 3 pairs)." in sentence
    )
    mean = statistics.fmean(a.values())
    shown = re.search(r": ([0-9.]+) ± ([0-9.]+) against", sentence)
    assert float(shown[1]) == pytest.approx(mean, abs=float(shown[2]) / 10 + 1e-12)
    assert " ".join(sentence.split()) in " ".join(output.split())
    table = (sweep / "comparison.md").read_text().splitlines()
    assert [row.split(" | ")[0].strip("| ") for row in table[2:5]] == [
        f"optimizer.lr={lr[name]},optimizer={name}" for name in names
    ]


def markdown_table(text: str, heading: str) -> list[dict[str, str]]:
    """The rows of the Markdown table under `## heading` in comparison.md, by column."""
    lines = text.split(f"## {heading}", 1)[1].strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip().strip("|").split(" | ")))))
    return rows


@pytest.mark.slow  # sweep=compare: two stages of jobs
def test_every_pair_the_tuning_curve_the_defaults_and_the_time_to_target_are_recomputed_from_the_jobs(
    comparison,
):
    """Every number the comparison adds, recomputed from the jobs' metrics.json and event files:
    each pair's difference and Holm's adjustment by hand (over Welch's p by quadrature), the
    tuning curve by trying every subset of each study's grid points, the defaults' means, and
    the steps to the target read back by TensorBoard's reader (scipy's checks: the next test)."""
    sweep, output, _, _ = comparison
    plan = json.loads((sweep / "compare.json").read_text())
    jobs = compare_jobs(sweep)
    text = (sweep / "comparison.md").read_text()
    finals = stage_two_bests(sweep, plan)
    names = list(finals)

    # every pair: the difference, Holm by hand over Welch's p by quadrature, the verdicts
    pairs = list(csv.DictReader((sweep / "pairs.csv").open()))
    expected = [(x, y) for i, x in enumerate(names) for y in names[i + 1 :]]
    assert [(r["first"].split()[0], r["second"].split()[0]) for r in pairs] == expected
    samples = [(list(finals[x].values()), list(finals[y].values())) for x, y in expected]
    holm = holm_by_hand([welch_p_by_quadrature(a, b) for a, b in samples])
    for row, adjusted, (a, b) in zip(pairs, holm, samples):
        assert float(row["difference"]) == pytest.approx(
            statistics.fmean(a) - statistics.fmean(b), rel=1e-12
        )
        assert float(row["p_holm"]) == pytest.approx(adjusted, rel=1e-9)
        told = f"{row['first']} better" if adjusted < 0.05 else "not told apart"
        assert row["verdict"] == told
    support = next(
        line for line in text.splitlines() if line.startswith("What the seeds support: ")
    )
    assert support.startswith(f"What the seeds support: {pairs[0]['first']} ")

    # the studies' picks, as the sentence says them
    picks = studies_picks(jobs)
    sentence = next(line for line in text.splitlines() if line.startswith("Stage 1's 3 studies"))
    for name, picked in picks.items():
        counts = sorted(((picked.count(v), v) for v in set(picked)), key=lambda c: -c[0])
        assert f"{name} " + ", ".join(f"lr {v:g} in {n}" for n, v in counts) in sentence.replace(
            "e-0", "e-"
        )

    # the tuning curve: each study's mean at each point, every subset of n points tried
    import itertools

    curve = list(csv.DictReader((sweep / "tuning.csv").open()))
    for name in ("sgd", "adam", "momentum"):
        for study, seed in enumerate((5, 6, 7)):
            values = [
                m["monitor"]["best"] if m["status"] == "finished" else math.inf
                for job, m in sorted(jobs.items())
                if job.startswith("stage1/")
                and m["hparams"]["seed"] == seed
                and m["hparams"]["optimizer"] == name
            ]
            assert len(values) == 3
            for n in (1, 2, 3):
                bests = [min(subset) for subset in itertools.combinations(values, n)]
                row = next(
                    r
                    for r in curve
                    if r["optimizer"] == name and r["study"] == str(study) and r["points"] == str(n)
                )
                if math.isinf(max(bests)):
                    assert row["expected_best"] == ""
                else:
                    assert float(row["expected_best"]) == pytest.approx(
                        statistics.fmean(bests), rel=1e-12
                    )
    assert matplotlib.image.imread(sweep / "tuning.png").shape[1] > 600

    # each optimizer at its default learning rate beside its tuned point
    defaults = markdown_table(text, "each optimizer tuned and at its defaults")
    assert [r["optimizer"] for r in defaults] == ["sgd", "adam", "momentum"]
    for row in defaults:
        name = row["optimizer"]
        assert row["default"] == f"lr {DEFAULT_LR[name]:g}"
        runs = [jobs[j] for j in plan["baselines"][name]["jobs"]]
        bests = [m["monitor"]["best"] for m in runs if m["status"] == "finished"]
        shown = re.match(r"([0-9.]+)(?: ± ([0-9.]+))?", row["default: best val/loss"])
        if len(bests) == len(runs):
            half = float(shown[2]) if shown[2] else 0.0
            assert float(shown[1]) == pytest.approx(
                statistics.fmean(bests), abs=half / 10 + 1e-6 * abs(statistics.fmean(bests))
            )
        assert (
            f"(picked by {statistics.mode(picks[name]) and picks[name].count(statistics.mode(picks[name]))} of 3 studies)"
            in row["tuned"]
        )

    # the steps to within 1% of the best configuration's mean, from each job's event file
    target = statistics.fmean(next(iter(finals.values())).values()) * 1.01
    timed = {
        r["configuration"]: r
        for r in markdown_table(text, f"time to best val/loss ≤ {float(f'{target:.4g}'):g}")
    }
    for name, seeds in finals.items():
        steps = []
        for job in plan["stage2"]:
            m = jobs[job]
            if m["hparams"]["optimizer"] != name or m["status"] != "finished":
                continue
            curve = scalar_history(sweep / job)["val/loss"]
            hit = next((step for step, value in curve if value <= target), None)
            if hit is not None:
                steps.append(hit)
        row = next(r for c, r in timed.items() if c.startswith(f"{name} at lr"))
        assert row["seeds that reached it"] == f"{len(steps)} of {len(seeds)}"
        if steps:
            assert row["steps: median (min to max)"].split()[0] == f"{statistics.median(steps):.0f}"
    assert "Time to best val/loss ≤ " in text and re.search(r"gets? there first", output)


@pytest.mark.slow  # sweep=compare: two stages of jobs
def test_every_pairs_interval_p_and_chance_of_beating_are_scipys(comparison):
    """pairs.csv against scipy 1.17.1, run in a process of its own (tests/scipy_reference.py):
    Welch's p and 95% interval (ttest_ind(equal_var=False), confidence_interval()) and
    P(first better on a seed) from Mann-Whitney's U."""
    from conftest import scipy_reference

    sweep = comparison[0]
    plan = json.loads((sweep / "compare.json").read_text())
    finals = stage_two_bests(sweep, plan)
    names = list(finals)
    pairs = list(csv.DictReader((sweep / "pairs.csv").open()))
    samples = [
        (list(finals[x].values()), list(finals[y].values()))
        for i, x in enumerate(names)
        for y in names[i + 1 :]
    ]
    for row, scipy, (a, b) in zip(pairs, scipy_reference(samples), samples, strict=True):
        assert float(row["ci95_low"]) == pytest.approx(scipy["low"], rel=1e-9)
        assert float(row["ci95_high"]) == pytest.approx(scipy["high"], rel=1e-9)
        assert float(row["p"]) == pytest.approx(scipy["p"], rel=1e-9)
        # lower is better: P(a < b) + P(a = b) / 2 = 1 - U(a) / (n_a n_b)
        assert float(row["p_first_better"]) == pytest.approx(
            1 - scipy["u"] / (len(a) * len(b)), abs=1e-12
        )


@pytest.mark.slow  # sweep=compare: two stages of jobs
def test_compare_run_again_into_its_directory_trains_nothing_and_says_the_same(comparison):
    sweep, output, again, untouched = comparison
    assert "27 of 27 jobs already have a final result" in again
    assert re.search(r"(\d+) of \1 jobs already have a final result", again.split("stage 2:")[1])
    assert untouched  # not a byte of any job changed
    sentence = (sweep / "comparison.md").read_text().strip().splitlines()[-1]
    assert " ".join(sentence.split()) in " ".join(again.split())
