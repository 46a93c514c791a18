"""Progress: one line redrawn in place on a terminal, a few plain lines in CI or a file."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest

from conftest import train_in_process


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_with_stdout(
    stream: io.StringIO, overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    monkeypatch.setattr(sys, "stdout", stream)
    train_in_process(overrides, tmp_path)
    monkeypatch.undo()
    return stream.getvalue()


def test_full_batch_fit_redraws_one_line_counting_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("CI", raising=False)
    out = run_with_stdout(
        Terminal(),
        [
            "experiment=thermometer",
            "trainer.max_epochs=400",
            "callbacks.progress.refresh_seconds=0",
        ],
        tmp_path,
        monkeypatch,
    )
    frames = out.split("\r")[1:]
    assert len(frames) > 100  # redrawn in place, here at every epoch
    assert out.count("\n") == 1 and out.endswith("\n")
    assert re.search(r"epoch 1/400 ", frames[0]) and re.search(
        r"epoch 400/400 .*train/loss [\d.]+", frames[-1]
    )
    assert "step" not in out


def test_mini_batch_fit_shows_the_steps_of_the_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("CI", raising=False)
    out = run_with_stdout(
        Terminal(),
        ["trainer.max_epochs=2", "callbacks.progress.refresh_seconds=0"],
        tmp_path,
        monkeypatch,
    )
    assert "epoch 1/2 · step 3/8" in out and "epoch 2/2 · step 8/8" in out


def test_ci_gets_plain_lines_not_redraws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CI", "true")
    out = run_with_stdout(
        Terminal(),
        [
            "experiment=thermometer",
            "trainer.max_epochs=400",
            "callbacks.progress.plain_every_seconds=3600",
        ],
        tmp_path,
        monkeypatch,
    )
    assert "\r" not in out
    progress = [line for line in out.splitlines() if "epoch" in line]
    assert progress == [progress[-1]] and "epoch 400/400" in progress[0]


def test_output_to_a_file_gets_periodic_plain_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("CI", raising=False)
    out = run_with_stdout(
        io.StringIO(),
        [
            "experiment=thermometer",
            "trainer.max_epochs=300",
            "callbacks.progress.plain_every_seconds=0",
        ],
        tmp_path,
        monkeypatch,
    )
    lines = [line for line in out.splitlines() if "epoch" in line]
    # every step here, since the period is 0, and the final line
    assert "\r" not in out and len(lines) == 301
