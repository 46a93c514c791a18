"""Benchmark this package end to end against plain PyTorch loops.

    python benchmarks/run.py [--reps 3] [--data /usr/share/datasets/fashion-mnist] [--quick]
                             [--cases 2,3] [--before REV] [--skip NAMES]

Every command is a fresh process, start-up included (but in --quick), and the variants of each case run side by
side: repetition 1 of every variant, then repetition 2, and so on, so a slow minute on a shared
machine hits them alike. The tables (medians over the repetitions, with ratios against the
targets) go to benchmarks/RESULTS.md and benchmarks/results.json, or --out. --quick runs tiny
sizes once, every command in this process (the smoke test of this script; its times
mean nothing). With a GPU, cases 1 to 3 also run on it.

  1. MNIST-style data, the tutorial's 784-28-10 MLP, Adam 1e-3, batch 128, 2 epochs: the package,
     the tutorial's own loop (benchmarks/tutorial_loop.py) and a loop over preloaded tensors
     (benchmarks/plain_preloaded.py).
  2. The thermometer fit, 5000 full-batch SGD epochs: the package and benchmarks/plain_thermometer.py.
  3. 15 thermometer fits (5 optimizers x 3 learning rates): the package's multirun, one job after
     another and on the parallel launcher, and benchmarks/plain_sweep.py.
  4. Start-up: `--help` and a 1-epoch run against `python -c "import torch"`.
  5. A Fashion-MNIST sweep of 6 jobs (adam, sgd x lr 1e-4, 1e-3, 1e-2; 2 epochs): the basic launcher
     against hydra/launcher=vectorized (exact, and with hydra.launcher.exact=false), and whether
     each job's test accuracy is its solo run's.
  6. How a population's cost grows: thermometer sweeps of K = 1, 4, 16, 64, 256 Adam learning
     rates on hydra/launcher=vectorized, wall time against K = 1 and peak memory.
  7. A fair comparison on the thermometer: `sweep=compare` with one study and no defaults (5
     optimizers x 13 learning rates with one seed, then each optimizer's best learning rate with 10 seeds: 110 distinct fits) on the
     vectorized launcher (the preset's) and on the basic launcher, against a plain loop doing the
     same fits one after another (benchmarks/plain_compare.py).
  8. The same on Fashion-MNIST: adam, sgd and momentum x 5 learning rates, 5 seeds, 2 epochs.
  9. What the instruments cost: the thermometer fit of case 2 and (with data) the MLP of case 1
     with dynamics=none, basic, noise and curvature at their default intervals, per training epoch
     against dynamics=none.
 10. What the studies cost: sweep=compare on the thermometer (sgd, adam, momentum x 5 learning
     rates, 5 seeds) with 1 study, 3 studies, and 3 studies with each optimizer at its defaults,
     on the vectorized and the basic launcher, wall time against 1 study.
Case 3 also runs the 15 jobs on hydra/launcher=vectorized.

--before REV runs every package command a second time on the code of git revision REV (a
worktree, on PYTHONPATH, with --before-path's folders after it), side by side with this one, so
the tables hold both and the targets table gives each ratio then and now; --skip leaves out
variants by name (e.g. 'basic launcher').
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
TRAIN = [PY, "-m", "experiments.train"]
ALL_CASES = "1,2,3,4,5,6,7,8,9,10"


@dataclass
class Variant:
    name: str
    command: list[str]
    reads: str = ""  # "package": the run's metrics.json; "json": the last line of stdout; "sweep": every job's metrics.json
    runs: list[dict] = field(default_factory=list)
    jobs: int = 1
    env: dict = field(default_factory=dict)  # --before: PYTHONPATH to the earlier revision's src/


def run(command: list[str], workdir: Path, env: dict | None = None) -> dict:
    """Run a command to its end; its wall time, peak memory and output."""
    out, err = workdir / "stdout", workdir / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "CI": "true", **(env or {})},
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(
            f"benchmark command failed ({code}): {' '.join(command)}\n{err.read_text()[-3000:]}"
        )
    return {"seconds": seconds, "peak_mb": usage.ru_maxrss / 1024, "stdout": out.read_text()}


def run_here(command: list[str], workdir: Path) -> dict:
    """A command run in this process, as --quick does: a package command through
    experiments.cli.main (the command line's own path), a script through runpy, `-c` code through
    exec. The imports are paid once, so the smoke test checks every case in a fraction of the
    time; its wall times and memory then mean nothing."""
    import contextlib
    import resource
    import runpy

    from experiments import cli, train

    out, err = workdir / "stdout", workdir / "stderr"
    where, argv, ci = os.getcwd(), list(sys.argv), os.environ.get("CI")
    os.environ["CI"] = "true"
    os.chdir(workdir)
    try:
        with out.open("w") as stdout, err.open("w") as stderr:
            started = time.perf_counter()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    if command[: len(TRAIN)] == TRAIN:
                        code = cli.main(train.main, "train", command[len(TRAIN) :])
                    elif command[1] == "-c":
                        exec(compile(command[2], "<string>", "exec"), {"__name__": "__main__"})
                        code = 0
                    else:
                        sys.argv = command[1:]
                        runpy.run_path(command[1], run_name="__main__")
                        code = 0
                except SystemExit as exit:
                    code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
            seconds = time.perf_counter() - started
    finally:
        os.chdir(where)
        sys.argv = argv
        if ci is None:
            os.environ.pop("CI")
        else:
            os.environ["CI"] = ci
    if code != 0:
        raise SystemExit(
            f"benchmark command failed ({code}): {' '.join(command)}\n{err.read_text()[-3000:]}"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak, "stdout": out.read_text()}


def measure(variant: Variant, workdir: Path, here: bool = False) -> None:
    """Run a variant once into workdir and keep what it measured; here: in this process (--quick)."""
    workdir.mkdir(parents=True)
    if here and not variant.env:
        result = run_here(variant.command, workdir)
    else:
        result = run(variant.command, workdir, variant.env)
    if variant.reads == "json":
        result["json"] = json.loads(result["stdout"].strip().splitlines()[-1])
    elif variant.reads == "package":
        metrics = sorted(workdir.glob("**/metrics.json"))
        result["json"] = (
            json.loads(metrics[0].read_text()) if len(metrics) == 1 else {"jobs": len(metrics)}
        )
    elif variant.reads == "sweep":
        records = [json.loads(path.read_text()) for path in sorted(workdir.glob("**/metrics.json"))]
        result["json"] = {
            "test_acc_by_job": {
                Path(r["run_dir"]).name: (r.get("test") or {}).get("test/acc") for r in records
            },
            "statuses": sorted(r["status"] for r in records),
        }
    result.pop("stdout")
    variant.runs.append(result)


def median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(variant: Variant) -> dict:
    """Medians over the repetitions: wall time, peak memory, per-epoch training time, test accuracy."""

    def epoch(run: dict) -> float | None:
        data = run.get("json") or {}
        if "epoch_seconds" in data:
            return statistics.median(data["epoch_seconds"])
        return (data.get("timing") or {}).get("train_epoch_s_median")

    def accuracy(run: dict) -> float | None:
        data = run.get("json") or {}
        return data.get("test_acc", (data.get("test") or {}).get("test/acc"))

    # a sweep's jobs as its folders hold them (a comparison's stage 2 depends on stage 1)
    statuses = (variant.runs[-1].get("json") or {}).get("statuses") if variant.runs else None
    jobs = len(statuses) if statuses else variant.jobs
    return {
        "variant": variant.name,
        "command": " ".join(variant.command).replace(PY, "python"),
        "jobs": jobs,
        "per_job_s": median([r["seconds"] / jobs for r in variant.runs]),
        "accuracies": (variant.runs[-1].get("json") or {}).get("test_acc_by_job")
        if variant.runs
        else None,
        "repetitions": len(variant.runs),
        "wall_s": median([r["seconds"] for r in variant.runs]),
        "wall_s_all": [round(r["seconds"], 3) for r in variant.runs],
        "peak_mb": median([r["peak_mb"] for r in variant.runs]),
        "epoch_s": median([epoch(r) for r in variant.runs]),
        "test_acc": median([accuracy(r) for r in variant.runs]),
    }


def cases(
    args: argparse.Namespace, work: Path, data: Path | None, device: str
) -> dict[str, list[Variant]]:
    gpu = device == "cuda"
    accelerator = [f"trainer.accelerator={'gpu' if gpu else 'cpu'}"]
    plain_device = ["--device", device]
    quick = args.quick
    epochs = ["trainer.max_epochs=50"] if quick else []
    plain_epochs = ["--epochs", "50"] if quick else []
    suffix = " (gpu)" if gpu else ""
    found: dict[str, list[Variant]] = {}
    if data is not None:
        from experiments.data.idx_files import prepare

        fashion = "fashion" in str(data)
        name = "FashionMNIST" if fashion else "MNIST"
        torchvision_root = prepare(data, name, work / "cache")
        experiment = "fashion_mnist" if fashion else "mnist"
        flag = ["--fashion"] if fashion else []
        sizes = ["data.val_size=100"] if quick else []
        found["1 " + experiment + suffix] = [
            Variant(
                "package",
                [*TRAIN, f"experiment={experiment}", f"data.root={data}", *sizes, *accelerator],
                "package",
            ),
            Variant(
                "tutorial loop",
                [PY, str(HERE / "tutorial_loop.py"), str(torchvision_root), *flag, *plain_device],
                "json",
            ),
            Variant(
                "preloaded loop",
                [
                    PY,
                    str(HERE / "plain_preloaded.py"),
                    str(torchvision_root),
                    *flag,
                    *plain_device,
                    *(["--val-size", "100"] if quick else []),
                ],
                "json",
            ),
        ]
    found["2 thermometer" + suffix] = [
        Variant("package", [*TRAIN, "experiment=thermometer", *epochs, *accelerator], "package"),
        Variant(
            "plain script",
            [PY, str(HERE / "plain_thermometer.py"), *plain_epochs, *plain_device],
            "json",
        ),
    ]
    sweep = ["optimizer=sgd,adam", "optimizer.lr=0.01"] if quick else ["sweep=optimizers"]
    jobs = 2 if quick else 15
    found["3 sweep of 15" + suffix] = [
        Variant(
            "package, sequential",
            [*TRAIN, "-m", "experiment=thermometer", *sweep, *epochs, *accelerator],
            "package",
            jobs=jobs,
        ),
        Variant(
            "package, parallel launcher",
            [
                *TRAIN,
                "-m",
                "hydra/launcher=parallel",
                # --quick: joblib's own path in this process; its two workers would pay the
                # imports again for two 50-epoch jobs (tests/test_sweeps.py runs them for real)
                *(["hydra.launcher.n_jobs=1"] if quick else []),
                "experiment=thermometer",
                *sweep,
                *epochs,
                *accelerator,
            ],
            "package",
            jobs=jobs,
        ),
        Variant(
            "package, vectorized launcher",
            [
                *TRAIN,
                "-m",
                "hydra/launcher=vectorized",
                "experiment=thermometer",
                *sweep,
                *epochs,
                *accelerator,
            ],
            "package",
            jobs=jobs,
        ),
        Variant(
            "plain script",
            [PY, str(HERE / "plain_sweep.py"), *plain_epochs, *plain_device],
            "json",
            jobs=15,
        ),
    ]
    if data is not None:
        grid = ["optimizer=adam,sgd", "optimizer.lr=1e-4,1e-3,1e-2"]
        common = [
            f"experiment={experiment}",
            f"data.root={data}",
            *grid,
            *(["data.val_size=100", "trainer.max_epochs=1"] if quick else []),
            *accelerator,
        ]
        found["5 " + experiment + " sweep of 6" + suffix] = [
            Variant("package, sequential", [*TRAIN, "-m", *common], "sweep", jobs=6),
            Variant(
                "package, vectorized launcher",
                [*TRAIN, "-m", "hydra/launcher=vectorized", *common],
                "sweep",
                jobs=6,
            ),
            Variant(
                "package, vectorized, exact=false",
                [*TRAIN, "-m", "hydra/launcher=vectorized", "hydra.launcher.exact=false", *common],
                "sweep",
                jobs=6,
            ),
        ]
    sizes_k = (1, 4) if quick else (1, 4, 16, 64, 256)
    found["6 population size" + suffix] = [
        Variant(
            f"K={k}",
            [
                *TRAIN,
                "-m",
                "hydra/launcher=vectorized",
                "experiment=thermometer",
                "optimizer=adam",
                "optimizer.lr="
                + ",".join(f"{10 ** (-3 + 2 * i / max(k - 1, 1)):.6g}" for i in range(k)),
                *epochs,
                *accelerator,
            ],
            "package",
            jobs=k,
        )
        for k in sizes_k
    ]
    # one study and no defaults: the same fits as the plain loop's (case 10 measures the rest)
    compare = [
        *TRAIN,
        "sweep=compare",
        "hydra.sweeper.studies=1",
        "hydra.sweeper.baselines=false",
        *accelerator,
    ]
    plain_compare = [PY, str(HERE / "plain_compare.py")]
    thermometer = (
        [
            "optimizer=sgd,adam",
            "optimizer.lr=1e-2,1e-1",
            "hydra.sweeper.seeds=2",
            "trainer.max_epochs=50",
        ]
        if quick
        else []
    )
    plain_thermometer = (
        ["--optimizers", "sgd,adam", "--lrs", "1e-2,1e-1", "--seeds", "2", "--epochs", "50"]
        if quick
        else []
    )
    fits = 6 if quick else 110
    found["7 thermometer comparison" + suffix] = [
        Variant(
            "package, vectorized launcher",
            [*compare, "experiment=thermometer", *thermometer],
            "sweep",
            jobs=fits,
        ),
        Variant(
            "package, basic launcher",
            [*compare, "hydra/launcher=basic", "experiment=thermometer", *thermometer],
            "sweep",
            jobs=fits,
        ),
        Variant(
            "plain loop",
            [*plain_compare, "thermometer", *plain_thermometer, *plain_device],
            "json",
            jobs=fits,
        ),
    ]
    if data is not None:
        names, lrs, seeds = (
            ("adam,sgd", "1e-3,1e-2", 2)
            if quick
            else ("adam,sgd,momentum", "1e-4,1e-3,1e-2,3e-2,1e-1", 5)
        )
        fits = len(names.split(",")) * (len(lrs.split(",")) + seeds - 1)
        fashion_compare = [
            f"experiment={experiment}",
            f"data.root={data}",
            f"optimizer={names}",
            f"optimizer.lr={lrs}",
            f"hydra.sweeper.seeds={seeds}",
            *(["data.val_size=100", "trainer.max_epochs=1"] if quick else []),
        ]
        found["8 " + experiment + " comparison" + suffix] = [
            Variant(
                "package, vectorized launcher", [*compare, *fashion_compare], "sweep", jobs=fits
            ),
            Variant(
                "package, basic launcher",
                [*compare, "hydra/launcher=basic", *fashion_compare],
                "sweep",
                jobs=fits,
            ),
            Variant(
                "plain loop",
                [
                    *plain_compare,
                    "mnist",
                    str(torchvision_root),
                    *flag,
                    "--optimizers",
                    names,
                    "--lrs",
                    lrs,
                    "--seeds",
                    str(seeds),
                    *(["--epochs", "1"] if quick else []),
                    *plain_device,
                ],
                "json",
                jobs=fits,
            ),
        ]
    # what the repeated studies (and the defaults beside the tuned points) cost on each launcher
    opts, lrs, seeds = (
        ("sgd,adam", "1e-2,1e-1", 3)
        if quick
        else ("sgd,adam,momentum", "1e-3,1e-2,1e-1,0.464,1.0", 5)
    )
    grid_points = len(opts.split(",")) * len(lrs.split(","))
    studies_case = []
    # --quick: the vectorized launcher alone (the basic one's figures need the full sizes anyway)
    for launcher in ("vectorized",) if quick else ("vectorized", "basic"):
        for studies, baselines in (
            ((1, "false"), (3, "true")) if quick else ((1, "false"), (3, "false"), (3, "true"))
        ):
            studies_case.append(
                Variant(
                    f"{launcher} launcher, {studies} stud{'y' if studies == 1 else 'ies'}"
                    + (", defaults" if baselines == "true" else ""),
                    [
                        *TRAIN,
                        "sweep=compare",
                        f"hydra/launcher={launcher}",
                        "experiment=thermometer",
                        f"optimizer={opts}",
                        f"optimizer.lr={lrs}",
                        f"hydra.sweeper.seeds={seeds}",
                        f"hydra.sweeper.studies={studies}",
                        f"hydra.sweeper.baselines={baselines}",
                        *epochs,
                        *accelerator,
                    ],
                    "sweep",
                    jobs=grid_points * studies + len(opts.split(",")) * (seeds - studies),
                )
            )
    found["10 studies, thermometer comparison" + suffix] = studies_case
    tiers = ("none", "basic", "noise", "curvature")
    found["9 instruments, thermometer" + suffix] = [
        Variant(
            f"dynamics={tier}",
            [*TRAIN, "experiment=thermometer", f"dynamics={tier}", *epochs, *accelerator],
            "package",
        )
        for tier in tiers
    ]
    if data is not None:
        found["9 instruments, " + experiment + suffix] = [
            Variant(
                f"dynamics={tier}",
                [
                    *TRAIN,
                    f"experiment={experiment}",
                    f"data.root={data}",
                    f"dynamics={tier}",
                    *(["data.val_size=100", "trainer.max_epochs=1"] if quick else []),
                    *accelerator,
                ],
                "package",
            )
            for tier in tiers
        ]
    if not gpu:
        found["4 start-up"] = [
            Variant("python -c 'import torch'", [PY, "-c", "import torch"]),
            Variant("package --help", [*TRAIN, "--help"]),
            Variant(
                "package, 1-epoch run", [*TRAIN, "trainer.max_epochs=1", *accelerator], "package"
            ),
        ]
    return found


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def measured(results: dict[str, list[dict]]) -> list[dict]:
    """Each target of the speed issues, its measured ratio and whether it is met."""
    rows = []
    missing = dict.fromkeys(("wall_s", "epoch_s", "per_job_s", "test_acc", "accuracies"))
    for case, variants in results.items():
        # a variant left out (--skip) measures nothing: its targets are left out
        by_name = defaultdict(lambda: missing, {v["variant"]: v for v in variants})
        if case.startswith("1 "):
            package, tutorial, preloaded = (
                by_name["package"],
                by_name["tutorial loop"],
                by_name["preloaded loop"],
            )
            rows.append(
                {
                    "case": case,
                    "target": "per training epoch <= 1.5x the preloaded loop",
                    "value": ratio(package["epoch_s"], preloaded["epoch_s"]),
                    "limit": 1.5,
                    "better": "lower",
                }
            )
            rows.append(
                {
                    "case": case,
                    "target": "end to end >= 3x faster than the tutorial's loop",
                    "value": ratio(tutorial["wall_s"], package["wall_s"]),
                    "limit": 3.0,
                    "better": "higher",
                }
            )
            gap = (
                None
                if package["test_acc"] is None or tutorial["test_acc"] is None
                else abs(package["test_acc"] - tutorial["test_acc"]) * 100
            )
            rows.append(
                {
                    "case": case,
                    "target": "test accuracy within 0.5 points of the tutorial's loop",
                    "value": gap,
                    "limit": 0.5,
                    "better": "lower",
                    "unit": "points",
                }
            )
        elif case.startswith("2 "):
            rows.append(
                {
                    "case": case,
                    "target": "end to end <= 1.5x the plain script",
                    "value": ratio(by_name["package"]["wall_s"], by_name["plain script"]["wall_s"]),
                    "limit": 1.5,
                    "better": "lower",
                }
            )
        elif case.startswith("3 "):
            for name in ("package, parallel launcher", "package, sequential"):
                rows.append(
                    {
                        "case": case,
                        "target": f"{name}: end to end <= 2x the plain script",
                        "value": ratio(by_name[name]["wall_s"], by_name["plain script"]["wall_s"]),
                        "limit": 2.0,
                        "better": "lower",
                    }
                )
            vectorized = by_name["package, vectorized launcher"]["wall_s"]
            rows.append(
                {
                    "case": case,
                    "target": "vectorized launcher: end to end <= 0.4x the plain script",
                    "value": ratio(vectorized, by_name["plain script"]["wall_s"]),
                    "limit": 0.4,
                    "better": "lower",
                }
            )
            rows.append(
                {
                    "case": case,
                    "target": "vectorized launcher: >= 5x faster than the basic launcher",
                    "value": ratio(by_name["package, sequential"]["wall_s"], vectorized),
                    "limit": 5.0,
                    "better": "higher",
                }
            )
        elif case.startswith("5 "):
            basic, vectorized = (
                by_name["package, sequential"],
                by_name["package, vectorized launcher"],
            )
            rows.append(
                {
                    "case": case,
                    "target": "vectorized launcher: >= 3x faster than the basic launcher",
                    "value": ratio(basic["wall_s"], vectorized["wall_s"]),
                    "limit": 3.0,
                    "better": "higher",
                }
            )
            same = (
                None
                if basic["accuracies"] is None or vectorized["accuracies"] is None
                else basic["accuracies"] == vectorized["accuracies"]
            )
            rows.append(
                {
                    "case": case,
                    "target": "each job's test accuracy equal to its solo run's",
                    "value": None if same is None else float(same),
                    "limit": 1.0,
                    "better": "higher",
                    "unit": "(1: all equal)",
                }
            )
        elif case.startswith("6 "):
            first = by_name["K=1"]
            for last in variants:
                if last is first:
                    continue
                limit = 1.5 if last["variant"] == "K=64" else None
                rows.append(
                    {
                        "case": case,
                        "target": f"wall time of {last['variant']} against K=1"
                        + (f" <= {limit}x" if limit else ""),
                        "value": ratio(last["wall_s"], first["wall_s"]),
                        "limit": limit,
                        "better": "lower",
                    }
                )
        elif case.startswith(("7 ", "8 ")):
            package, basic, plain = (
                by_name["package, vectorized launcher"],
                by_name["package, basic launcher"],
                by_name["plain loop"],
            )
            if case.startswith("7 "):
                twenty = None if plain["per_job_s"] is None else 20 * plain["per_job_s"]
                rows.append(
                    {
                        "case": case,
                        "target": f"end to end <= 20 plain fits one after another ({number(twenty)} s)",
                        "value": ratio(package["wall_s"], twenty),
                        "limit": 1.0,
                        "better": "lower",
                        "unit": "x those 20 fits",
                    }
                )
            rows.append(
                {
                    "case": case,
                    "target": "vectorized launcher against the basic launcher (speed-up)",
                    "value": ratio(basic["wall_s"], package["wall_s"]),
                    "limit": 1.0,
                    "better": "higher",
                }
            )
            rows.append(
                {
                    "case": case,
                    "target": "vectorized launcher against the plain loop of the same fits",
                    "value": ratio(package["wall_s"], plain["wall_s"]),
                    "limit": 1.0,
                    "better": "lower",
                }
            )
        elif case.startswith("10 "):
            for launcher in ("vectorized", "basic"):
                one = by_name[f"{launcher} launcher, 1 study"]["wall_s"]
                for name in ("3 studies", "3 studies, defaults"):
                    rows.append(
                        {
                            "case": case,
                            "target": f"{launcher} launcher: {name} against 1 study (wall time)",
                            "value": ratio(by_name[f"{launcher} launcher, {name}"]["wall_s"], one),
                            "limit": None,
                            "better": "lower",
                        }
                    )
        elif case.startswith("9 "):
            for tier in ("basic", "noise", "curvature"):
                rows.append(
                    {
                        "case": case,
                        "target": f"dynamics={tier}: per training epoch against dynamics=none",
                        "value": ratio(
                            by_name[f"dynamics={tier}"]["epoch_s"],
                            by_name["dynamics=none"]["epoch_s"],
                        ),
                        "limit": None,
                        "better": "lower",
                    }
                )
        elif case.startswith("4 "):
            torch_wall = by_name["python -c 'import torch'"]["wall_s"]
            for name, target, limit in (
                ("package --help", "--help < 1.5x `import torch`", 1.5),
                ("package, 1-epoch run", "a 1-epoch run <= 1.8x `import torch`", 1.8),
            ):
                rows.append(
                    {
                        "case": case,
                        "target": target,
                        "value": ratio(by_name[name]["wall_s"], torch_wall),
                        "limit": limit,
                        "better": "lower",
                    }
                )
    rows = [row for row in rows if row["value"] is not None]
    for row in rows:
        value = row["value"]
        row["met"] = (
            None
            if row["limit"] is None
            else value is not None
            and (value <= row["limit"] if row["better"] == "lower" else value >= row["limit"])
        )
    return rows


BEFORE = " [before]"
PACKAGE = "python -m experiments.train"


def targets(results: dict[str, list[dict]]) -> list[dict]:
    """The targets measured on this revision, each with the same ratio measured on the earlier
    one (--before), whose package variants ran side by side with these."""
    now = {c: [v for v in vs if not v["variant"].endswith(BEFORE)] for c, vs in results.items()}
    rows = measured(now)
    if any(v["variant"].endswith(BEFORE) for vs in results.values() for v in vs):
        then = {
            case: [
                {**v, "variant": v["variant"].removesuffix(BEFORE)}
                for v in variants
                # a plain loop is shared; a package variant without its twin has no earlier value
                if v["variant"].endswith(BEFORE) or not v["command"].startswith(PACKAGE)
            ]
            for case, variants in results.items()
        }
        earlier = {(r["case"], r["target"]): r["value"] for r in measured(then)}
        for row in rows:
            row["before"] = earlier.get((row["case"], row["target"]))
    return rows


def with_before(
    plan: dict[str, list[Variant]], src: Path, extra: str = ""
) -> dict[str, list[Variant]]:
    """Each package variant twice: as it is, and on the earlier revision's code (PYTHONPATH, then
    `extra`: folders holding what the earlier code needs that this one does not)."""
    return {
        case: [
            twin
            for v in variants
            for twin in (
                [v]
                if v.command[:3] != TRAIN
                else [
                    v,
                    Variant(
                        v.name + BEFORE,
                        v.command,
                        v.reads,
                        jobs=v.jobs,
                        env={"PYTHONPATH": os.pathsep.join(filter(None, [str(src), extra]))},
                    ),
                ]
            )
        ]
        for case, variants in plan.items()
    }


def machine() -> dict:
    import lightning
    import torch

    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    memory = (
        next(
            (
                int(line.split()[1]) // 1024**2
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            ),
            None,
        )
        if Path("/proc/meminfo").exists()
        else None
    )
    return {
        "date": date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
    }


def number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def markdown(report: dict) -> str:
    info = report["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"`python benchmarks/run.py --reps {report['reps']}`{' --quick' if report['quick'] else ''}, {info['date']}: "
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB"
        + (f", {info['gpu']}" if info["gpu"] else ", no GPU")
        + f"; Python {info['python']}, torch {info['torch']}, Lightning {info['lightning']}.",
        "Medians over the repetitions; every command is a fresh process, start-up included.",
        "",
        "## Targets",
        "",
        "| case | target | measured | met | before (" + (report.get("before") or "none") + ") |",
        "|---|---|---|---|---|",
    ]
    for row in report["targets"]:
        unit = row.get("unit", "x")
        met = "" if row["met"] is None else "yes" if row["met"] else "no"
        before = f"{number(row['before'])} {unit}" if row.get("before") is not None else ""
        lines.append(
            f"| {row['case']} | {row['target']} | {number(row['value'])} {unit} | {met} | {before} |"
        )
    for case, variants in report["results"].items():
        lines += [
            "",
            f"## Case {case}",
            "",
            "| variant | jobs | wall s | s per job | per-epoch s | test acc | peak MB | wall s, each run |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for v in variants:
            lines.append(
                f"| {v['variant']} | {v['jobs']} | {number(v['wall_s'])} | {number(v['per_job_s'])} | {number(v['epoch_s'])} | {number(v['test_acc'], 4)} | {number(v['peak_mb'])} | {v['wall_s_all']} |"
            )
        lines += ["", "Commands:", ""] + [f"- {v['variant']}: `{v['command']}`" for v in variants]
    return "\n".join(lines) + "\n"


def skipped(skip: str, case: str, name: str) -> bool:
    """Whether --skip leaves a variant out: a part of its name, or CASE:part for one case only."""
    for part in filter(None, skip.split(",")):
        number, _, words = part.rpartition(":")
        if words in name and (not number or case.startswith(f"{number} ")):
            return True
    return False


def output_dir(args: argparse.Namespace) -> Path:
    """The published tables (benchmarks/RESULTS.md) are replaced only by a full run of every case;
    --quick, a subset of cases or a device of choice write to benchmarks/out/ (ignored by git)."""
    if args.out is not None:
        return args.out
    full = (
        not args.quick
        and args.cases == ALL_CASES
        and args.devices == "auto"
        and args.reps >= 3
        and not args.skip
    )
    return HERE if full else HERE / "out"


def main(argv: list[str] | None = None) -> None:
    """The command line; argv: its arguments (the quick smoke test passes them in-process)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=3,
        help="repetitions of each command (at least 3 for the published table)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("/usr/share/datasets/fashion-mnist"),
        help="a folder with the four MNIST-style IDX files",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, one repetition, every command in this process: checks the benchmark runs",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where RESULTS.md and results.json go (default: benchmarks/ for a full run, benchmarks/out/ otherwise)",
    )
    parser.add_argument("--cases", default=ALL_CASES, help="which cases to run, e.g. 2,3")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="a new folder to keep every command's output in (default: a temporary one, removed)",
    )
    parser.add_argument(
        "--before",
        default=None,
        help="a git revision: each package command also runs on its code, side by side (a git worktree)",
    )
    parser.add_argument(
        "--before-path",
        default="",
        help="folders added to the earlier code's PYTHONPATH: the packages it needs that this "
        "revision does not (ca44279 needs scipy: pip install --no-deps --target DIR scipy)",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated parts of variant names not to run, e.g. 'basic launcher,3:sequential' (3: in case 3 only; '[before]' the earlier code's runs)",
    )
    parser.add_argument(
        "--devices",
        default="auto",
        help="cpu, cuda, or cpu,cuda; auto: cpu, and cuda when there is a GPU",
    )
    args = parser.parse_args(argv)
    reps = 1 if args.quick else args.reps
    if args.keep is not None:
        args.keep.mkdir(parents=True)  # a new folder: no earlier output is touched
    with tempfile.TemporaryDirectory(prefix="experiments-bench-") as tmp:
        work = Path(tmp) if args.keep is None else args.keep.resolve()
        data = args.data if args.data.is_dir() else None
        if args.quick:
            from experiments.data.idx_files import write_fake_set

            data = write_fake_set(work / "fake-mnist", 600, 100)
        elif data is None:
            print(
                f"no MNIST-style files in {args.data}: case 1 is skipped (pass --data DIR)",
                file=sys.stderr,
            )
        import torch

        devices = (
            (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
            if args.devices == "auto"
            else args.devices.split(",")
        )
        plan = dict(
            sorted(
                (name, variants)
                for device in devices
                for name, variants in cases(args, work, data, device).items()
                if name.split()[0] in args.cases.split(",")
            )
        )
        plan = {
            case: [v for v in variants if not skipped(args.skip, case, v.name)]
            for case, variants in plan.items()
        }
        if args.before:
            tree = work / "before"
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(HERE.parent),
                    "worktree",
                    "add",
                    "--detach",
                    str(tree),
                    args.before,
                ],
                check=True,
                capture_output=True,
            )
            plan = {  # --skip "K=256 [before]" leaves out the earlier code's run alone
                case: [v for v in variants if not skipped(args.skip, case, v.name)]
                for case, variants in with_before(
                    plan,
                    tree / "src",
                    os.pathsep.join(
                        str(Path(p).resolve()) for p in args.before_path.split(os.pathsep) if p
                    ),
                ).items()
            }
        try:
            for rep in range(reps):
                for name, variants in plan.items():
                    for variant in variants:
                        print(f"[{rep + 1}/{reps}] case {name}: {variant.name}", flush=True)
                        measure(
                            variant,
                            work
                            / f"{name}-{variant.name}-{rep}".replace(" ", "_")
                            .replace(",", "")
                            .replace("'", ""),
                            here=args.quick,
                        )
        finally:
            if args.before:
                subprocess.run(
                    ["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(tree)],
                    check=True,
                )
    results = {name: [summary(v) for v in variants] for name, variants in plan.items()}
    report = {
        "machine": machine(),
        "before": args.before,
        "reps": reps,
        "quick": args.quick,
        "targets": targets(results),
        "results": results,
    }
    out = output_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "RESULTS.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
