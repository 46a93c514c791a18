"""The process around the entry points (`python -m experiments.train`, `experiments.evaluate`,
`lr_find`, `gradcheck`): the command line made ready for Hydra, every user mistake printed as
one sentence with exit code 1 (130 for Ctrl-C, 143 for SIGTERM) and nothing left behind, and a
quick exit."""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from experiments import speedups
from experiments.config import UserError, mistake
from experiments.overrides import config_error, disk_full, flag_error, prepare_arguments
from experiments.rundir import discard_claimed
from experiments.signals import exit_code, stop_on_sigterm_while_starting

# Entry points that act on one configuration: a sweep of them would write nothing useful.
ONE_JOB = {"evaluate": "re-tests one run", "gradcheck": "checks the gradient of one configuration"}


def run_cli(entry: Callable[[], Any], config_name: str) -> None:
    """Run a Hydra entry point as this process's whole life: its mistakes as one sentence and exit 1."""
    # Hydra's own error printing spans several lines; with this set its exceptions reach us.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    sys.argv = [sys.argv[0], *prepare_arguments(sys.argv[1:])]
    stop_on_sigterm_while_starting()
    quiet_full_disk_in_threads()
    code: int | str | None = 0
    try:
        if config_name in ONE_JOB and asks_for_multirun(sys.argv[1:]):
            raise UserError(
                f"experiments.{config_name} {ONE_JOB[config_name]}; run it without -m (once per setting)."
            )
        entry()
    except SystemExit as done:
        code = done.code
    except UserError as error:
        code = mistake(error)
    except (
        KeyboardInterrupt
    ) as interrupt:  # before the run's own handler was reached (Hydra still setting up)
        code = exit_code(interrupt)
        sys.stderr.write("interrupted before training started; nothing was kept\n")
    except Exception as error:
        message = (
            config_error(error, sys.argv[1:], config_name) or disk_full(error) or flag_error(error)
        )
        if message is None:
            raise
        code = mistake(message)
    if isinstance(code, str) or code in (130, 143):  # a refused or interrupted start leaves nothing
        discard_claimed()
    speedups.exit_now(code)


def quiet_full_disk_in_threads() -> None:
    """A full disk met by a writer thread (TensorBoard writes its events from one) also fails the
    main thread's next write, which says it in one sentence; the thread's own traceback on stderr
    would be a second."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or disk_full(args.exc_value) is None:
            previous(args)

    threading.excepthook = hook


def one_sentence(function: Callable[..., Any]) -> Callable[..., Any]:
    """A mistake leaves a Hydra task function or callback as the exit carrying its sentence, which
    run_cli prints: Hydra would log an exception leaving a task function as "Error executing job",
    and turn one leaving a callback into a warning and go on."""

    @functools.wraps(function)
    def refusing(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except UserError as error:
            raise SystemExit(mistake(error)) from None

    return refusing


def asks_for_multirun(argv: list[str]) -> bool:
    return any(
        arg in ("-m", "--multirun") or arg.replace(" ", "") == "hydra.mode=MULTIRUN" for arg in argv
    )
