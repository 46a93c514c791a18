"""The process around the entry points (`python -m experiments.train`, `experiments.evaluate`,
`lr_find`, `gradcheck`): the command line made ready for Hydra, every user mistake printed as
one sentence with exit code 1 (130 for Ctrl-C, 143 for SIGTERM) and nothing left behind, and a
quick exit."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from experiments.core import speedups
from experiments.core.config import UserError, mistake
from experiments.core.overrides import config_error, disk_full, flag_error, prepare_arguments
from experiments.core.rundir import discard_claimed, holdings, release_since
from experiments.core.signals import exit_code, stop_on_sigterm_while_starting

# Entry points that act on one configuration: a sweep of them would write nothing useful.
ONE_JOB = {
    "evaluate": "re-tests one run",
    "gradcheck": "checks the gradient of one configuration",
    "landscape": "draws the landscape of one run or sweep (a sweep's jobs all on one plane)",
}


def outcome(entry: Callable[[], Any], config_name: str, argv: list[str]) -> int | str:
    """Run a Hydra entry point on `argv` in this process; how it ended: an exit code (130 for
    Ctrl-C, 143 for SIGTERM), or a mistake's one sentence ("error: ..."). The one translation of
    errors, for the command line and experiments.api alike; a refused or interrupted start
    leaves nothing behind."""
    # Hydra's own error printing spans several lines; with this set its exceptions reach us.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    sys.argv = [sys.argv[0], *prepare_arguments(argv)]
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
    if isinstance(code, str) or code in (130, 143):
        discard_claimed()
    return code or 0


def in_process(entry: Callable[[], Any], config_name: str, argv: list[str]) -> int | str:
    """`outcome`, with the caller's process given back as it was (Preserved) and the directories
    the entry point locked released, as the command line's process would on its exit."""
    earlier = holdings()
    try:
        with Preserved():
            sys.argv = [f"experiments.{config_name}"]
            return outcome(entry, config_name, argv)
    finally:
        release_since(earlier)


def main(entry: Callable[[], Any], config_name: str, argv: list[str]) -> int:
    """What `python -m experiments.<config_name> ARGV` prints and exits with, run in this process:
    a mistake's sentence on stderr and 1, else the exit code. Tests drive the command line so."""
    code = in_process(entry, config_name, argv)
    if isinstance(code, str):
        sys.stderr.write(code + "\n")
        return 1
    return code


def run_cli(entry: Callable[[], Any], config_name: str) -> None:
    """Run a Hydra entry point as this process's whole life: its mistakes as one sentence and exit 1."""
    stop_on_sigterm_while_starting()
    quiet_full_disk_in_threads()
    speedups.exit_now(outcome(entry, config_name, sys.argv[1:]))


class Preserved:
    """The caller's process as it was: sys.argv, the working directory, every logger's handlers,
    level and propagation (Hydra configures logging for each run), the warnings filters, the
    environment (the entry point sets HYDRA_FULL_ERROR, Lightning PL_GLOBAL_SEED, the run's lock
    EXPERIMENTS_OWNED_DIRS) and the handlers of SIGINT and SIGTERM (a fit installs its own)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> Preserved:
        self.argv, self.cwd = list(sys.argv), os.getcwd()
        self.handlers = {signum: signal.getsignal(signum) for signum in self.SIGNALS}
        self.loggers = {
            logger: (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
            for logger in self.all_loggers()
        }
        self.filters = list(warnings.filters)
        self.environ = dict(os.environ)
        return self

    @staticmethod
    def all_loggers() -> list[logging.Logger]:
        found = [logging.getLogger()]
        found += [
            logger
            for logger in logging.root.manager.loggerDict.values()
            if isinstance(logger, logging.Logger)
        ]
        return found

    def __exit__(self, *exc: object) -> None:
        sys.argv = self.argv
        os.chdir(self.cwd)
        for logger in self.all_loggers():
            handlers, level, propagate, disabled = self.loggers.get(
                logger, ([], logging.NOTSET, True, False)
            )
            for handler in list(logger.handlers):
                if handler not in handlers:  # a run's train.log, Hydra's console handler
                    logger.removeHandler(handler)
                    handler.close()
            for handler in handlers:
                if handler not in logger.handlers:
                    logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled
        warnings.filters[:] = self.filters
        if threading.current_thread() is threading.main_thread():  # elsewhere none can change
            for signum, handler in self.handlers.items():
                if handler is not None:  # None: set outside Python, which cannot be restored
                    signal.signal(signum, handler)
        for key in set(os.environ) - set(self.environ):
            del os.environ[key]
        os.environ.update(self.environ)


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
