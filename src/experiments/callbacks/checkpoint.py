"""Checkpoints that survive a kill, and that are data, never code.

Every checkpoint is written to a temporary file beside its target and renamed over it, so a kill
during the write leaves the previous good checkpoint in place; a temporary file left by a killed
process is removed at the next write. Checkpoints are read with `weights_only=True` only.
Which checkpoints a run keeps is BestAndLastCheckpoint, Lightning's ModelCheckpoint configured in
conf/callbacks/: best.ckpt by the monitored metric, and last.ckpt, the latest state at every
validation, at the end and at an interruption.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from experiments.callbacks.interruption import Interruption
from experiments.core.config import UserError
from experiments.core.state import write_atomically


class BestAndLastCheckpoint(Interruption, LightningModelCheckpoint):
    """Lightning's ModelCheckpoint for checkpoints/best.ckpt (the best by `monitor`), which also
    keeps checkpoints/last.ckpt as the latest state: rewritten at every validation (the last epoch
    is always validated) and where Ctrl-C or SIGTERM stopped training at a step boundary.

    One callback for both: Lightning calls every hook of every callback at every step. Its
    `state_key`, a repr of its settings that Lightning formats at each of those calls, is
    computed once: the settings it shows never change."""

    def __init__(self, *args: Any, last: bool = True, **kwargs: Any) -> None:
        LightningModelCheckpoint.__init__(self, *args, save_last=False, **kwargs)
        Interruption.__init__(self)
        self.last = last

    @functools.cached_property
    def state_key(self) -> str:
        return super().state_key

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.last and self.dirpath:
            self.save_to = os.path.join(
                self.dirpath, f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.save_to and trainer.state.fn == "fit" and not trainer.sanity_checking:
            trainer.save_checkpoint(self.save_to)


def read_checkpoint(path: str | Path, key: str) -> dict[str, Any]:
    """A checkpoint written by experiments.train, loaded as data (weights_only=True); anything else
    is refused with one sentence naming `key`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"{key}={path} does not exist; pass a .ckpt file, such as <run dir>/checkpoints/last.ckpt."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    # torch raises anything from KeyError to UnpicklingError on a file that is not one
    except Exception:
        raise UserError(
            f"{key}={path} is not a checkpoint torch.load can read safely; pass a .ckpt file written by experiments.train."
        ) from None
    if (
        not isinstance(checkpoint, dict)
        or "state_dict" not in checkpoint
        or "run_config" not in checkpoint
    ):
        raise UserError(
            f"{key}={path} is not a checkpoint written by experiments.train (it has no state_dict and run_config)."
        )
    return checkpoint


def check_fits(
    checkpoint: dict[str, Any], model: Any, optimizer_target: str, key: str, path: str | Path
) -> None:
    """A checkpoint to start from holds weights of this very model and state of this optimizer."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    saved = checkpoint["run_config"]
    if found != expected:
        name = str((saved.get("model") or {}).get("_target_", "another model")).rsplit(".", 1)[-1]
        shapes = ", ".join("x".join(map(str, s)) for s in list(found.values())[:4])
        raise UserError(
            f"{key}={path} holds the weights of a {name} ({shapes}), which do not fit this run's {type(model).__name__}; pass a checkpoint of the same model."
        )
    trained_with = (saved.get("optimizer") or {}).get("_target_")
    if trained_with and trained_with != optimizer_target:
        raise UserError(
            f"{key}={path} was trained with {trained_with}, whose state does not fit this run's {optimizer_target}; use the same optimizer."
        )


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary checkpoint files of processes that no longer run (killed during a write)."""
    for tmp in folder.glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_atomically(checkpoint: dict[str, Any] | bytes, path: str | Path) -> None:
    """A checkpoint (or its bytes, serialized once for several files) written whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    data = checkpoint if isinstance(checkpoint, bytes) else serialized(checkpoint)
    write_atomically(path, data, sync=True)


def serialized(checkpoint: dict[str, Any]) -> bytes:
    """What torch.save writes for a checkpoint, byte for byte."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        save_atomically(checkpoint, path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # Checkpoints are data: never unpickle arbitrary objects from one.
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
