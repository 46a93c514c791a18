"""The benchmark's quick mode runs every case end to end, so the benchmark cannot rot.

It times nothing that is asserted: CI machines vary; the published numbers are in
benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import fake_mnist

REPO = Path(__file__).resolve().parents[1]


CASES = {  # two halves of about equal time, so that the two test workers share them
    "1,2,4,5,6,10": [
        "1 mnist",
        "10 studies, thermometer comparison",
        "2 thermometer",
        "4 start-up",
        "5 mnist sweep of 6",
        "6 population size",
    ],
    "3,7,8,9": [
        "3 sweep of 15",
        "7 thermometer comparison",
        "8 mnist comparison",
        "9 instruments, mnist",
        "9 instruments, thermometer",
    ],
}


@pytest.mark.slow  # the benchmark: every case end to end
@pytest.mark.parametrize("cases", sorted(CASES))
def test_the_quick_benchmark_runs_every_case_and_writes_its_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cases: str
):
    """In this process, as --quick runs its commands: the test pays no second import of torch
    and Lightning."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.chdir(tmp_path)
    import run as benchmark

    data = fake_mnist(tmp_path / "digits")
    benchmark.main(
        ["--quick", "--cases", cases, "--data", str(data), "--out", str(tmp_path / "out")]
    )
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(report["results"]) == CASES[cases]
    results = report["results"]
    for variants in results.values():
        assert all(v["repetitions"] == 1 and v["wall_s"] > 0 for v in variants)
    if "1 mnist" in results:
        package = results["1 mnist"][0]
        assert (
            package["variant"] == "package"
            and 0 <= package["test_acc"] <= 1
            and package["epoch_s"] > 0
        )
    if "3 sweep of 15" in results:
        sweeps = {v["variant"]: v for v in results["3 sweep of 15"]}
        assert set(sweeps) == {
            "package, sequential",
            "package, parallel launcher",
            "package, vectorized launcher",
            "plain script",
        }
    if "5 mnist sweep of 6" in results:
        fashion = {v["variant"]: v for v in results["5 mnist sweep of 6"]}
        assert (
            fashion["package, sequential"]["accuracies"]
            == fashion["package, vectorized launcher"]["accuracies"]
            and len(fashion["package, sequential"]["accuracies"]) == 6
        )
    if "6 population size" in results:
        assert [v["jobs"] for v in results["6 population size"]] == [1, 4]
    for case in {"7 thermometer comparison", "8 mnist comparison"} & set(results):
        compared = {v["variant"]: v for v in results[case]}
        assert set(compared) == {
            "package, vectorized launcher",
            "package, basic launcher",
            "plain loop",
        }
        assert compared["package, vectorized launcher"]["jobs"] == 6
    if "10 studies, thermometer comparison" in results:
        studies = {v["variant"]: v for v in results["10 studies, thermometer comparison"]}
        assert list(studies) == [
            "vectorized launcher, 1 study",
            "vectorized launcher, 3 studies, defaults",
        ]
        # 2 x 2 points: 4 jobs of seed 0, then seeds 1 and 2 of each chosen point; 3 studies: 12
        # jobs of seeds 0 to 2, and adam's default (lr 0.001, not on the grid) with its 3 seeds
        assert [v["jobs"] for v in studies.values()] == [8, 15]
        costs = [r for r in report["targets"] if r["case"].startswith("10 ")]
        assert [r["target"] for r in costs] == [
            "vectorized launcher: 3 studies, defaults against 1 study (wall time)"
        ] and all(r["value"] > 0 for r in costs)
    for case in {"9 instruments, mnist", "9 instruments, thermometer"} & set(results):
        tiers = {v["variant"]: v for v in results[case]}
        assert list(tiers) == [f"dynamics={t}" for t in ("none", "basic", "noise", "curvature")]
        assert all(v["epoch_s"] > 0 for v in tiers.values())
        costs = [row for row in report["targets"] if row["case"] == case]
        assert [row["target"].split(":")[0] for row in costs] == [
            "dynamics=basic",
            "dynamics=noise",
            "dynamics=curvature",
        ] and all(row["value"] > 0 for row in costs)
    assert {row["case"] for row in report["targets"]} == set(results)
    table = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "## Targets" in table
    if "2 thermometer" in results:
        assert "| 2 thermometer | end to end <= 1.5x the plain script |" in table


def test_the_two_halves_of_the_quick_benchmark_are_every_case():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import run as benchmark

    halves = [case for half in CASES.values() for case in half]
    assert sorted(halves) == sorted(
        {
            "1 mnist",
            "2 thermometer",
            "3 sweep of 15",
            "4 start-up",
            "5 mnist sweep of 6",
            "6 population size",
            "7 thermometer comparison",
            "8 mnist comparison",
            "9 instruments, mnist",
            "9 instruments, thermometer",
            "10 studies, thermometer comparison",
        }
    )
    numbers = sorted({case.split()[0] for case in halves}, key=int)
    assert numbers == benchmark.ALL_CASES.split(",")


def test_before_runs_each_package_command_on_the_earlier_code_and_reports_both_ratios():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import run as benchmark

    plain = benchmark.Variant("plain script", [sys.executable, "plain_thermometer.py"], "json")
    package = benchmark.Variant("package", [*benchmark.TRAIN, "experiment=thermometer"], "package")
    plan = benchmark.with_before({"2 thermometer": [package, plain]}, Path("/old/src"))
    names = [(v.name, v.env) for v in plan["2 thermometer"]]
    assert names == [
        ("package", {}),
        ("package [before]", {"PYTHONPATH": "/old/src"}),
        ("plain script", {}),
    ]
    plan = benchmark.with_before({"2 thermometer": [package]}, Path("/old/src"), "/old/deps")
    assert plan["2 thermometer"][1].env == {"PYTHONPATH": f"/old/src{os.pathsep}/old/deps"}
    train = "python -m experiments.train"
    results = {
        "2 thermometer": [
            {"variant": "package", "command": train, "wall_s": 12.0},
            {"variant": "package [before]", "command": train, "wall_s": 18.0},
            {"variant": "plain script", "command": "python plain_thermometer.py", "wall_s": 10.0},
        ],
        # --skip "K=256 [before]": K=256 has no earlier ratio (not this revision's taken for it)
        "6 population size": [
            {"variant": "K=1", "command": train, "wall_s": 10.0},
            {"variant": "K=1 [before]", "command": train, "wall_s": 10.0},
            {"variant": "K=64", "command": train, "wall_s": 14.0},
            {"variant": "K=64 [before]", "command": train, "wall_s": 30.0},
            {"variant": "K=256", "command": train, "wall_s": 40.0},
        ],
    }
    row, k64, k256 = benchmark.targets(results)
    assert (row["value"], row["before"], row["met"]) == (1.2, 1.8, True)
    assert (k64["value"], k64["before"], k64["met"]) == (1.4, 3.0, True)
    assert (k256["value"], k256["before"]) == (4.0, None)
    assert benchmark.skipped("6:K=256 [before]", "6 population size", "K=256 [before]")
    assert not benchmark.skipped("6:K=256 [before]", "6 population size", "K=256")

    assert benchmark.skipped("3:sequential,K=4", "3 sweep of 15", "package, sequential")
    assert not benchmark.skipped(
        "3:sequential,K=4", "5 fashion_mnist sweep of 6", "package, sequential"
    )
    assert benchmark.skipped("3:sequential,K=4", "6 population size", "K=4")
    assert not benchmark.skipped("3:sequential,K=4", "6 population size", "K=64")
