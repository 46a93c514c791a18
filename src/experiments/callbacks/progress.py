"""Progress as one live line on a terminal, as one output updated in place in a Jupyter notebook,
and as plain periodic lines in CI or a log file.

A full-batch fit (one step per epoch) shows epochs; a mini-batch fit shows the steps of the
current epoch. The line is redrawn at most every `refresh_seconds`, so it costs nothing per step.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar


def is_live(stream: TextIO) -> bool:
    """Redraw in place only on a real terminal outside CI."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return not ci and hasattr(stream, "isatty") and stream.isatty()


def notebook_output() -> Any | None:
    """In a Jupyter kernel, an output of the running cell that can be updated in place (IPython's
    display handle); None elsewhere."""
    if "ipykernel" not in sys.modules:
        return None
    from IPython import get_ipython
    from IPython.display import display

    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    return display({"text/plain": ""}, raw=True, display_id=True)


class ProgressLine(ProgressBar):
    """Lightning's TQDMProgressBar and RichProgressBar redraw bars; in CI or a log file that is a
    stream of carriage returns, where this prints a plain line every `plain_every_seconds`."""

    def __init__(
        self,
        refresh_seconds: float = 0.1,
        plain_every_seconds: float = 10.0,
        stream: TextIO | None = None,
    ):
        super().__init__()
        self.refresh_seconds = refresh_seconds
        self.plain_every_seconds = plain_every_seconds
        self._stream = stream
        self._enabled = True
        self._next_render = 0.0
        self._start = 0.0
        self.notebook: Any | None = None

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.notebook = notebook_output() if self._stream is None and self.is_enabled else None
        self.live = self.notebook is not None or is_live(self.stream)
        self._start = time.monotonic()
        self._next_render = self._start + (
            self.refresh_seconds if self.live else self.plain_every_seconds
        )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = time.monotonic()
        if now >= self._next_render and self.is_enabled:
            self._next_render = now + (
                self.refresh_seconds if self.live else self.plain_every_seconds
            )
            self.render(trainer, batch_idx + 1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.is_enabled:
            self.render(trainer, trainer.num_training_batches, final=True)

    def line(self, trainer: pl.Trainer, batch: int) -> str:
        steps = trainer.num_training_batches
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        epoch = (
            trainer.current_epoch + 1 if epochs is None else min(trainer.current_epoch + 1, epochs)
        )
        if steps == 1 or not isinstance(steps, int):
            done, total = epoch, epochs
            where = f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}"
        else:
            done, total = batch, steps
            where = (
                f"epoch {epoch}/{epochs} · step {batch}/{steps}"
                if epochs
                else f"epoch {epoch} · step {batch}/{steps}"
            )
        parts = [where]
        if total:
            filled = round(20 * min(done, total) / total)
            parts.insert(0, "━" * filled + "╺" + "━" * (20 - filled) if filled < 20 else "━" * 21)
        metrics = {
            k: v
            for k, v in self.get_metrics(trainer, trainer.lightning_module).items()
            if k != "v_num"
        }
        parts += [
            f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
            for name, value in metrics.items()
        ]
        parts.append(f"{time.monotonic() - self._start:.1f}s")
        return " · ".join(parts)

    def render(self, trainer: pl.Trainer, batch: int, final: bool = False) -> None:
        text = self.line(trainer, batch)
        if self.notebook is not None:
            self.notebook.update({"text/plain": text}, raw=True)
            return
        if self.live:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r" + text[:width] + "\x1b[K" + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
