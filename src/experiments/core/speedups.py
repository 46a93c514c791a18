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
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
from typing import Any

# Names this module relies on, checked by tests/test_speedups.py.
HOOK_NAME_ATTRIBUTE = "_current_fx_name"


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
