"""The process around the entry points (`python -m experiments.train`, `experiments.evaluate`):
the command line made ready for Hydra, a user's mistake turned into one sentence and exit code 1,
Lightning's console chatter kept out, and a quick exit."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments import speedups
from experiments.config import UserError

log = logging.getLogger("experiments")


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter and warnings meant for library authors off the console;
    what remains goes through our log handlers once."""
    import lightning.pytorch  # noqa: F401  (it installs its own handlers on import)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.WARNING)
    for message in (
        r".*LeafSpec.*",
        r".*is smaller than the logging interval.*",
        r".*Checkpoint directory .* exists and is not empty.*",
        r".*sync_dist=True.*",
        r".*does not have many workers.*",
        r".*Experiment logs directory .* exists and is not empty.*",
        r".*The dirpath has changed from.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def quote_value(value: str) -> str:
    """A value as Hydra's override grammar reads it literally, whatever it holds (`=`, `,`, spaces)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def prepare_arguments(argv: list[str]) -> list[str]:
    """`resume=<run dir>` continues a run with its own config: the run's own command-line overrides
    come first, then the new ones. A run directory named by a sweep's overrides (`=`, `,`) is
    quoted so Hydra reads it as one path."""
    resume = next((a for a in argv if a.startswith("resume=")), None)
    if resume is None:
        return argv
    run_dir = resume.partition("=")[2]
    if len(run_dir) > 1 and run_dir[0] == run_dir[-1] and run_dir[0] in "'\"":
        run_dir = run_dir[1:-1]
    saved = Path(run_dir) / ".hydra" / "overrides.yaml"
    original: list[str] = []
    if saved.is_file():
        from omegaconf import OmegaConf

        original = [str(o) for o in OmegaConf.load(saved)]
    rest = [a for a in argv if a is not resume]
    return [*original, *rest, f"resume={quote_value(run_dir)}"]


def run_cli(entry: Callable[[], Any]) -> None:
    """Run a Hydra entry point as this process's whole life: its mistakes as one sentence and exit 1."""
    # Hydra's own error printing spans several lines; with this set its exceptions reach us.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    sys.argv = [sys.argv[0], *prepare_arguments(sys.argv[1:])]
    code: int | str | None = 0
    try:
        entry()
    except SystemExit as done:
        code = done.code
    except UserError as error:
        code = f"error: {error}"
    except KeyboardInterrupt:
        code = 130
        sys.stderr.write("interrupted before training started; nothing was kept\n")
    except Exception as error:
        message = config_error(error)
        if message is None:
            raise
        code = f"error: {message}"
    speedups.exit_now(code)


def config_error(error: Exception) -> str | None:
    """One sentence for a mistake Hydra or OmegaConf found in the command line; None for anything else."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(error, (HydraException, OmegaConfBaseException)):
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    head, rest = (lines[0], lines[1:]) if lines else (type(error).__name__, [])
    if rest and rest[0].startswith("Available options"):
        return f"{head}; {rest[0][0].lower()}{rest[0][1:].rstrip(':')}: {', '.join(rest[1:])}."
    return head.rstrip(".") + "."
