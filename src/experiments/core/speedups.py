"""The one place where this package leans on names that Lightning, torch or CPython keep private.

Each trick below was measured with `benchmarks/` (2-core AMD EPYC VM, 2026-11-24) and is guarded
by tests/test_speedups.py, which fails when an upgrade changes the internal it relies on; a trick
that stops paying for itself is removed rather than kept "just in case".

1. `FastHookNames`: Lightning sets `LightningModule._current_fx_name` around every hook call, a
   dozen times a step; `nn.Module.__setattr__` checks parameters, buffers and submodules each time.
   Setting it as a plain attribute takes 15% off a thermometer fit (5000 full-batch epochs, three
   fits each: 1.94 s -> 1.65 s).
2. `exit_now`: the interpreter's own teardown of torch, Lightning, torchmetrics and matplotlib's
   modules takes longer than many of these runs' training: a 1-epoch run from the command line
   takes 4.4 s with it skipped, 5.9 s without (three runs each). After everything is flushed and
   the exit hooks have run (CPython's `threading._shutdown` and `atexit._run_exitfuncs`, in the
   interpreter's order), `os._exit` skips it.

3. `QuietProfiler`: when no profiler is asked for, Lightning wraps every hook call in its
   PassThroughProfiler's `profile()`, a generator-based context manager built anew each time,
   fifty times a step. This one hands back one shared `contextlib.nullcontext` instead (public
   API: a Profiler subclass). A thermometer fit, three callbacks: 1.79 s -> 1.56 s.

4. `skip_nvml_probe`: importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (so that probing
   CUDA never initialises it before a fork), and then every Adam or AdamW step asks
   `torch.accelerator.current_accelerator(check_available=True)`, which loads NVML through ctypes
   anew: 0.1 ms a step on this CPU machine, 10% of a Fashion-MNIST step. Nothing in this package
   forks a process that uses CUDA (DataLoader workers never touch it; DDP and the parallel
   launcher start fresh interpreters), so the variable is removed again after the import, unless
   the user had set it. This one is a public, documented torch variable, kept here because it is a
   speed trick. (Plain SGD never probes, so the thermometer fits do not gain.)
5. `parse_configs_once`: Hydra parses every YAML file of a composition anew each time it composes,
   and a command composes several times (the mode, the run, each job of a sweep, a mistake's
   diagnosis). Each config source of Hydra's ConfigRepository gets a cache of what it parsed,
   keyed by the file's path, size and modification time, handing out a deep copy: a composition
   of `experiment=thermometer` takes 110 ms instead of 140 ms (20 compositions each, side by
   side), a fifth of the suite's composing. An edited file is parsed again.
6. `interpolation_map_when_needed`: for every node of a composition's defaults tree, Hydra builds
   an OmegaConf map of all the group choices (`defaults_list._create_interpolation_map`), used
   only where that node's defaults list holds an interpolation such as `- db: ${server}_db`;
   ours hold none. It is built only where one does: a composition of `experiment=thermometer
   optimizer=adam` takes 80 ms instead of 106-128 ms (20 each, three runs side by side), the same
   config to the byte.

8. `share_config_store`: Hydra copies its ConfigRepository deeply (`CachingConfigRepository`)
   for every composition and for each config group that `--help` lists, and with it the
   ConfigStore that its structured-config source holds, every structured config in it (3 ms a
   copy here, 112 copies in `--help`). The ConfigStore is a singleton (`ConfigStore.instance()`)
   and hands out a copy of each config it loads, so a deep copy of it is now the store itself.
   (Patching the source's class would not last: Hydra's plugin scan executes
   `hydra._internal.core_plugins` again, defining its classes anew.) `--help`
   takes 0.40 s instead of 0.76 s (medians of five runs each, side by side), the same text.

Not a speed trick, but a private name all the same:

7. `withdraw_stop`: a stop asked for in the training step just before a validation (Ctrl-C,
   SIGTERM, Slurm's notice) reaches Lightning's flag before the validation starts, and Lightning
   then ends that validation in its middle, where no last.ckpt is written: the run would resume
   from the validation before. experiments.callbacks.interruption takes the flag back
   (`trainer._signal_connector.received_sigterm`) and sets it again at the validation's end.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import importlib.resources
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Names this module relies on, checked by tests/test_speedups.py.
HOOK_NAME_ATTRIBUTE = "_current_fx_name"
SIGNAL_CONNECTOR = "_signal_connector"  # a Trainer's; its `received_sigterm` is the stop flag


def withdraw_stop(trainer: Any) -> bool:
    """Take back a stop Lightning's SIGTERM handler flagged (trick 7); whether there was one."""
    connector = getattr(trainer, SIGNAL_CONNECTOR)
    flagged = bool(connector.received_sigterm)
    connector.received_sigterm = False
    return flagged


class FastHookNames:
    """Mixed into a LightningModule: Lightning's per-hook bookkeeping attribute skips nn.Module's
    __setattr__ (trick 1)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == HOOK_NAME_ATTRIBUTE:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
_USER_NVML_CHECK = os.environ.get(NVML_CHECK)  # before anything imported Lightning


def skip_nvml_probe() -> None:
    """Trick 4, after Lightning is imported."""
    if _USER_NVML_CHECK is None:
        os.environ.pop(NVML_CHECK, None)


def quiet_profiler() -> Any:
    """Trick 3: the Trainer's profiler when the config names none."""
    from lightning.pytorch.profilers import PassThroughProfiler

    class QuietProfiler(PassThroughProfiler):
        _nothing = contextlib.nullcontext()

        def profile(self, action_name: str) -> contextlib.AbstractContextManager:
            return self._nothing

    return QuietProfiler()


def exit_now(code: int | str | None) -> None:
    """Trick 2: exit after flushing everything and running every exit hook, skipping the
    interpreter's teardown of the modules."""
    threading._shutdown()  # waits for non-daemon threads, as the interpreter does first
    atexit._run_exitfuncs()  # joblib's workers and TensorBoard's writers are closed here
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if isinstance(code, str):
        os.write(2, (code + "\n").encode())
        code = 1
    os._exit(code if isinstance(code, int) else 0)


PARSED: dict[tuple[str, str], tuple[tuple[int, int, int], Any]] = {}  # trick 5's cache


def interpolation_map_when_needed() -> None:
    """Trick 6. Idempotent."""
    try:
        from hydra._internal import defaults_list
    except ImportError:  # Hydra moved it: composing works as before, only slower
        return
    build = getattr(defaults_list, "_create_interpolation_map", None)
    if build is None or getattr(build, "when_needed", False):
        return

    def create_interpolation_map(overrides: Any, defaults: list[Any], self_added: bool) -> Any:
        if not any(d.is_interpolation() for d in defaults):
            return None  # read only for an interpolated default of this list
        return build(overrides, defaults, self_added)

    create_interpolation_map.when_needed = True  # type: ignore[attr-defined]
    defaults_list._create_interpolation_map = create_interpolation_map


def share_config_store() -> None:
    """Trick 8: a deep copy of Hydra's ConfigStore, a singleton, is the ConfigStore itself.
    Idempotent."""
    from hydra.core.config_store import ConfigStore

    if "__deepcopy__" not in vars(ConfigStore):
        ConfigStore.__deepcopy__ = lambda self, memo: self  # type: ignore[attr-defined]


def parse_configs_once() -> None:
    """Trick 5: each file and package config source of every Hydra ConfigRepository keeps what
    it parsed while the file is unchanged. Idempotent."""
    try:
        from hydra._internal.config_repository import ConfigRepository
    except ImportError:  # Hydra moved it: composing works as before, only slower
        return
    initialize = getattr(ConfigRepository, "initialize_sources", None)
    if initialize is None or getattr(initialize, "parses_once", False):
        return

    def initialize_sources(self: Any, config_search_path: Any) -> None:
        initialize(self, config_search_path)
        for source in self.sources:
            if source.scheme() in ("file", "pkg"):
                source.load_config = _parsed_once(source, source.load_config)

    initialize_sources.parses_once = True  # type: ignore[attr-defined]
    ConfigRepository.initialize_sources = initialize_sources


def _config_file(source: Any, config_path: str) -> Path | None:
    """The file a file:// or pkg:// source reads for config_path, where it is a plain file."""
    name = config_path if config_path.endswith(".yaml") else f"{config_path}.yaml"
    if source.scheme() == "file":
        return Path(source.path, name)
    try:
        found = importlib.resources.files(source.path.replace("/", ".")).joinpath(name)
    except (ImportError, TypeError, ValueError):
        return None
    return found if isinstance(found, Path) else None


def _parsed_once(source: Any, load: Callable[[str], Any]) -> Callable[[str], Any]:
    from hydra.plugins.config_source import ConfigResult

    def load_config(config_path: str) -> Any:
        path = _config_file(source, config_path)
        try:
            stat = path.stat() if path is not None else None
        except OSError:
            stat = None
        if stat is None:
            return load(config_path)  # Hydra says what is missing
        key = (source.path, config_path)
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        held = PARSED.get(key)
        if held is None or held[0] != signature:
            held = PARSED[key] = (signature, load(config_path))
        parsed = held[1]
        return ConfigResult(
            provider=parsed.provider,
            path=parsed.path,
            config=copy.deepcopy(parsed.config),
            header=dict(parsed.header),
            is_schema_source=parsed.is_schema_source,
        )

    return load_config
