"""experiments.api: the command line's runs and sweeps from Python, in this process, with its
guarantees; and the notebooks of notebooks/, executed by a real Jupyter kernel."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from conftest import cli, read_metrics
from experiments import UserError, api

REPO = Path(__file__).resolve().parents[1]
SHORT = ["experiment=thermometer", "trainer.max_epochs=100", "trainer.check_val_every_n_epoch=50"]


def readme_python() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## From Python and Jupyter") :]
    return section[section.index("```python\n") + 10 : section.index("```\n", 10)]


@pytest.mark.slow  # a real Jupyter kernel
def test_the_readmes_python_example_trains_twice_under_a_kernels_argv_with_the_guarantees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    """The README's example, run as written under a Jupyter kernel's sys.argv: two runs the
    command line takes (experiments.evaluate run=, resume=), a sweep, a mistake; the caller's
    argv, working directory, logging and warnings as they were."""
    monkeypatch.chdir(tmp_path)
    kernel_argv = ["ipykernel_launcher.py", "-f", str(tmp_path / "kernel-1.json")]
    monkeypatch.setattr(sys, "argv", list(kernel_argv))
    handlers, filters = list(logging.getLogger().handlers), list(warnings.filters)
    environ = dict(os.environ)
    names: dict = {}
    code = readme_python()
    first, rest = code.split("longer = ", 1)
    exec(first, names)
    # tutorial 002's fit, as the example's comments say
    assert names["run"].status == "finished"
    assert names["run"].parameters["weight"] == pytest.approx(5.367, abs=5e-4)
    assert names["run"].parameters["bias"] == pytest.approx(-17.30, abs=5e-3)
    assert names["run"].test["test/loss"] == pytest.approx(2.9276, abs=1e-4)
    exec("longer = " + rest, names)

    assert sys.argv == kernel_argv and Path.cwd() == tmp_path
    assert logging.getLogger().handlers == handlers and warnings.filters == filters
    assert dict(os.environ) == environ  # no lock, seed or Hydra variable left behind
    run, longer, slower, sweep = (names[k] for k in ("run", "longer", "slower", "sweep"))
    assert capsys.readouterr().out.endswith("optimizer.lr must be a positive number, got 'abc'.\n")
    assert len(list((tmp_path / "outputs" / "runs").iterdir())) == 2  # the mistake left nothing
    # the same run resumed to 6000 epochs (nearer the least-squares w = 5.3677), then another run
    assert run.parameters["weight"] == pytest.approx(5.3677, abs=2e-4)
    assert longer.run_dir.resolve() == run.run_dir.resolve() and longer.record["epochs"] == 6000
    assert slower.run_dir != run.run_dir and run.run_dir.parent == Path("outputs/runs")
    for each in (run, slower):
        record = read_metrics(each.run_dir)
        assert record["experiment"] == "thermometer" and record["status"] == "finished"
        assert (each.run_dir / ".hydra" / "config.yaml").is_file()
        assert "Finished in" in (each.run_dir / "train.log").read_text()
        assert set(each.checkpoints) == {"best", "last"}
    assert "optimizer.lr=0.005" in read_metrics(slower.run_dir)["overrides"]
    history = run.history
    assert isinstance(history, pd.DataFrame) and history.index.name == "step"
    assert {"train/loss", "val/loss", "test/loss"} <= set(history.columns)
    assert history["val/loss"].dropna().min() == pytest.approx(run.best, rel=1e-6)
    assert run.images["fit/line"][:4] == b"\x89PNG"
    assert "data:image/png;base64," in run._repr_html_()
    assert len(sweep.configurations) == 2 and len(sweep.runs) == 6
    # the same jobs as one population: bit for bit the same numbers, as each job's metrics.json says
    batched = names["batched"]
    assert [r.record["monitor"]["best"] for r in batched.runs] == [
        r.record["monitor"]["best"] for r in sweep.runs
    ]
    assert {r.record["population"] is not None for r in batched.runs} == {True}
    assert {r.record["population"] is None for r in sweep.runs} == {True}
    assert isinstance(names["same"], api.Sweep) and names["same"].sweep_dir == sweep.sweep_dir
    # each directory given up when its call ended: the command line could take it at once
    for folder in (run.run_dir, slower.run_dir, sweep.sweep_dir, sweep.runs[0].run_dir):
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if this process still held it
        finally:
            os.close(fd)
    evaluated = cli([f"run={slower.run_dir}"], tmp_path, module="experiments.evaluate")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]


def test_a_mistake_raises_the_command_lines_sentence_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    said = cli(["optimizer=adamm"], tmp_path).stderr.strip().removeprefix("error: ")
    assert said and not (tmp_path / "outputs").exists()
    for call, sentence in [
        (lambda: api.train("optimizer=adamm"), said),
        (
            lambda: api.train("optimizer.lr=abc"),
            "optimizer.lr must be a positive number, got 'abc'.",
        ),
        (
            lambda: api.sweep("experiment=thermometer", "sweep=compare", "seed=0,1"),
            "sweep=compare chooses the seeds itself",
        ),
        (lambda: api.train("-m", "optimizer.lr=0.1,0.2"), "experiments.api.train runs one"),
        (lambda: api.load(tmp_path), "holds neither a run"),
        # a value list beside a typo, under a preset that turns on multirun: the typo is named
        (
            lambda: api.sweep(
                "experiment=thermometer", "sweep=lr", "optimizer.lr=0.1,0.2", "optimizer.lrr=1"
            ),
            "optimizer.lrr is not a key of optimizer: did you mean optimizer.lr?",
        ),
        (
            lambda: api.sweep(
                "experiment=thermometer",
                "sweep=compare",
                "optimizer=sgd,adam",
                "hydra.sweeper.seed=5",
            ),
            "hydra.sweeper.seed is not a key of hydra.sweeper: did you mean hydra.sweeper.seeds?",
        ),
        (
            lambda: api.sweep(
                "experiment=thermometer", "sweep=lr", "optimizer.lr=0.1,0.2", trainer="cpux"
            ),
            "Could not find 'trainer/cpux'; available options in 'trainer': cpu,",
        ),
        (
            lambda: api.sweep("sweep=compare", hydra__sweeper__random_start="maybe"),
            "hydra.sweeper.random_start must be true (start each seed from the model's random initialisation) or false (keep the configured start), got 'maybe'.",
        ),
        (
            lambda: api.sweep("sweep=lr", hydra__sweeper__max_batch_size=0),
            "hydra.sweeper.max_batch_size must be a positive integer",
        ),
        (
            lambda: api.sweep("sweep=compare", sweeper="optuna"),
            "sweep=compare runs on hydra/sweeper=compare, but hydra/sweeper=optuna replaces it",
        ),
        (
            lambda: api.train("optimizer=sgd,adam"),
            "optimizer=sgd,adam gives optimizer several options, a sweep: experiments.api.sweep runs a job for each.",
        ),
        (
            lambda: api.train("optimizer.lr=0.1,0.2"),
            "a sweep: experiments.api.sweep runs a job for each; for one value write a list as optimizer.lr=[0.1,0.2] or quote",
        ),
        (
            lambda: api.train("trainer.max_epochs=2", trainer__max_epochs=3),
            "trainer.max_epochs is given twice, as 'trainer.max_epochs=2' and as the keyword trainer__max_epochs=3",
        ),
    ]:
        with pytest.raises(UserError) as raised:
            call()
        assert sentence in str(raised.value) and "\n" not in str(raised.value)
        assert not (tmp_path / "outputs").exists(), sentence


def test_sweep_returns_the_command_lines_tables_and_load_reads_what_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    args = [*SHORT, "optimizer=sgd,adam", "seed=0,1"]
    (tmp_path / "cli").mkdir()
    done = cli(["-m", *args], tmp_path / "cli")
    assert done.returncode == 0, done.stderr[-2000:]
    written = api.load(next((tmp_path / "cli" / "outputs" / "sweeps").iterdir()))
    monkeypatch.chdir(tmp_path)
    swept = api.sweep(*args)
    assert isinstance(written, api.Sweep) and isinstance(swept, api.Sweep)
    numbers = [c for c in swept.configurations.columns if c != "configuration"]
    pd.testing.assert_frame_equal(swept.configurations, written.configurations)
    # read from the jobs when asked for, equal to the sweep's CSV files once it ended
    pd.testing.assert_frame_equal(
        written.configurations, pd.read_csv(written.sweep_dir / "summary.csv")
    )
    pd.testing.assert_frame_equal(written.table, pd.read_csv(written.sweep_dir / "runs.csv"))
    assert len(swept.configurations) == 2 and numbers
    assert list(swept.table["job"]) == list(written.table["job"])
    assert list(swept.table["best val/loss"]) == list(written.table["best val/loss"])
    assert len(swept.runs) == 4 and all(run.status == "finished" for run in swept.runs)
    assert set(swept.pictures) >= {"summary", "curves"}
    run = api.load(written.runs[0].run_dir)
    assert isinstance(run, api.Run) and run.record == read_metrics(written.runs[0].run_dir)
    assert [r.best for r in written.runs] == [r.best for r in swept.runs]  # same jobs, same seeds
    assert "<table" in swept._repr_html_()


NOTEBOOKS = [
    "01_thermometer.ipynb",
    "02_comparing_optimizers.ipynb",
    "03_mnist_mlp.ipynb",
    "04_inside_training.ipynb",
]


def test_the_notebooks_are_the_four_the_kernel_test_runs():
    assert sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb")) == NOTEBOOKS


@pytest.mark.slow  # a real Jupyter kernel
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_runs_in_a_real_jupyter_kernel(tmp_path: Path, name: str):
    """The notebooks retell the tutorials: the thermometer by hand and by train (tutorial 002's w and b),
    an optimizer comparison with seeds, the MNIST MLP (on a small set of IDX files here), and why
    a learning rate diverges (the sharpness against 2 / lr, and the landscape)."""
    import nbformat
    from nbclient import NotebookClient

    from conftest import fake_mnist

    path = REPO / "notebooks" / name
    env = {"CI": "true"}
    if name == "03_mnist_mlp.ipynb":  # 5000 images for validation
        env["EXPERIMENTS_MNIST_ROOT"] = str(
            fake_mnist(tmp_path / "digits", n_train=5300, n_test=100)
        )
    notebook = nbformat.read(path, as_version=4)
    os.environ.update(env)
    try:
        NotebookClient(
            notebook,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(tmp_path)}},
        ).execute()
    finally:
        for key in env:
            os.environ.pop(key, None)
    results = "\n".join(
        output["data"].get("text/plain", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "execute_result"
    )
    printed = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )
    assert json.loads(json.dumps(printed))  # plain text
    if name == "01_thermometer.ipynb":  # progress: one output updated in place
        shown = [
            output
            for output in notebook.cells[3].outputs
            if output.get("output_type") in ("display_data", "update_display_data")
        ]
        assert [o["data"]["text/plain"] for o in shown][-1].startswith("━" * 21)
        assert "epoch 5000/5000" in shown[-1]["data"]["text/plain"]
        assert "━━" not in "".join(o.get("text", "") for o in notebook.cells[3].outputs)
        assert "by hand: w = 5.367, b = -17.30" in printed
        assert "with train: w = 5.367, b = -17.30" in printed
    elif name == "02_comparing_optimizers.ipynb":
        assert re.search(
            r"""(beats|are not told apart).*\(Welch's t-test\)\.["']$""", results, re.MULTILINE
        )
        assert "p_first_better" in results and "p_holm" in results  # comparison.pairs
    elif name == "04_inside_training.ipynb":
        assert "lr=0.01: sharpness 60.6, 2/lr 200.0: stable, finished" in printed
        assert "lr=0.03: sharpness 60.6, 2/lr 66.7: stable, finished" in printed
        assert "lr=0.034: sharpness 60.6, 2/lr 58.8: unstable, diverged" in printed
        assert "2015 evaluations of the loss" in printed  # its cost, said first
        assert "eigenvalues 0.17 and 60.6, ratio 357; minimum w = 5.368, b = -17.30" in printed
    else:
        assert re.search(r"test accuracy \d\.\d+", printed)


def test_keyword_values_are_one_value_whatever_they_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A path with a space and a comma, given as a keyword, is one path (Hydra would read a
    comma as a sweep and refuse it as ambiguous)."""
    monkeypatch.chdir(tmp_path)
    where = tmp_path / "a b,c" / "run"
    run = api.train(*SHORT, hydra__run__dir=str(where))
    assert run.run_dir == where and run.status == "finished"
    assert read_metrics(where)["status"] == "finished"


def test_history_of_a_run_logged_to_csv_is_its_metrics_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """logger=csv: the same steps and values as the TensorBoard run of the same command (which
    stores them as float32); logger=none: a sentence, not an empty table."""
    monkeypatch.chdir(tmp_path)
    events = api.train(*SHORT).history
    logged = api.train(*SHORT, logger="csv")
    history = logged.history
    assert (logged.run_dir / "metrics.csv").is_file() and history.index.name == "step"
    for tag in ("train/loss", "val/loss", "test/loss"):
        ours, theirs = history[tag].dropna(), events[tag].dropna()
        assert list(ours.index) == list(theirs.index) and len(ours) > 1 or tag == "test/loss"
        assert list(ours) == pytest.approx(list(theirs), rel=1e-6)
    with pytest.raises(UserError, match="holds no logged scalars .* logger=none"):
        api.train(*SHORT, logger="none").history


def test_sigterm_still_ends_the_process_after_train_and_sweep(tmp_path: Path):
    """A fit installs Lightning's SIGTERM handler; once it ends the process's own is back, so a
    notebook or script that trained can still be terminated (exit by signal 15)."""
    code = f"""
import os, signal, sys, time
from experiments import api
short = {SHORT!r}
api.train(*short)
api.sweep(*short, "optimizer.lr=0.01,0.02", launcher="vectorized")
print("default handler:", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, flush=True)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(10)
print("STILL ALIVE")
"""
    env = {**os.environ, "CI": "true"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGTERM, done.stderr[-2000:]
    assert "default handler: True" in done.stdout and "STILL ALIVE" not in done.stdout


def test_a_call_gives_the_callers_signal_handlers_back_whatever_the_fit_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A handler of the caller's own survives a call, even where a fit leaves its own installed
    (here: the interruption callback made to forget its restore)."""
    from experiments.callbacks.interruption import Interruption

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Interruption, "restore_handlers", lambda self: None)
    own = lambda signum, frame: None  # noqa: E731
    previous = signal.signal(signal.SIGTERM, own)
    try:
        api.train(*SHORT)
        assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_keyword_strings_hydra_would_misread_are_quoted():
    from experiments.api import literal

    assert literal("/data/a b,c") == "'/data/a b,c'" and literal("café") == "'café'"
    assert literal("x~y") == "'x~y'" and literal("it's") == "'it\\'s'"
    assert literal("1e-3") == "1e-3" and literal("/data/mnist") == "/data/mnist"
    assert literal(None) == "null" and literal([0.9, 0.99]) == "[0.9,0.99]"
