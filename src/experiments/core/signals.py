"""SIGTERM while a command is still starting (loading torch, composing, building the data) ends
it as Ctrl-C does: one line, exit code 143, nothing kept. Once a Trainer is about to train,
Lightning's own handler takes over, and SIGTERM stops training at a step boundary with a
checkpoint (experiments.callbacks.interruption)."""

from __future__ import annotations

import signal
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM before training started."""

    exit_code = 143


def _terminated(signum: int, frame: Any) -> None:
    raise Terminated


def stop_on_sigterm_while_starting() -> None:
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _terminated)


def hand_sigterm_to_lightning() -> None:
    """Before a Trainer fits: Lightning installs its handler only where SIGTERM has none."""
    if signal.getsignal(signal.SIGTERM) is _terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return getattr(interrupt, "exit_code", 130)
