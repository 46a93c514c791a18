"""A run directory belongs to one live run at a time, and a finished one is never written into again
except to continue it (resume=).

Ownership is an exclusive lock on the directory itself, held for the life of the process: the
kernel drops it however the process ends, SIGKILL included, so there is no stale lock to clean.
The processes a run starts for itself (Lightning's DDP ranks, a sweep job's own process) inherit
the ownership through an environment variable instead of taking the lock.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from experiments.core.config import UserError, flatten
from experiments.core.state import METRICS

OWNER_VARIABLE = "EXPERIMENTS_OWNED_DIRS"  # directories this process's parent already owns
_held: dict[str, int] = {}  # directory -> descriptor holding its lock, open until the process ends


def run_traces(folder: Path) -> list[str]:
    """What in `folder` shows that a run already lives there."""
    traces = [METRICS, ".hydra/overrides.yaml", "checkpoints"]
    return [t for t in traces if (folder / t).exists()] + [
        p.name for p in folder.glob("events.out.tfevents.*")
    ][:1]


def inherited(folder: Path) -> bool:
    return str(folder.resolve()) in os.environ.get(OWNER_VARIABLE, "").split(os.pathsep)


def own(folder: Path, key: str, shared: bool = False) -> None:
    """Take `folder` for this process (it must exist), or refuse in one sentence if a live run
    holds it; shared: together with the other workers of a shared search, which take it so too."""
    resolved = str(folder.resolve())
    if resolved in _held or inherited(folder):
        return
    fd = os.open(resolved, os.O_RDONLY)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(
            f"{key}={folder} is in use by another run that is still training; wait for it to end or pick another directory."
        ) from None
    _held[resolved] = fd
    owned = [p for p in os.environ.get(OWNER_VARIABLE, "").split(os.pathsep) if p]
    os.environ[OWNER_VARIABLE] = os.pathsep.join([*owned, resolved])


def holdings() -> tuple[set[str], set[str]]:
    """The directories this process holds and has created now (experiments.api runs many runs in
    one process and gives up each one's directories when it ends)."""
    return set(_held), set(_created)


def release_since(earlier: tuple[set[str], set[str]]) -> None:
    """Give up the locks taken since `earlier` was read from holdings(): an in-process run that
    ended no longer owns its directory (closing the descriptor drops the lock)."""
    held, created = earlier
    for folder in set(_held) - held:
        os.close(_held.pop(folder))
    for folder in set(_created) - created:
        _created.pop(folder)


def check_writable(key: str, folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise UserError(
            f"{key}={folder} cannot be created or written ({error.strerror}); pick a writable folder."
        ) from None


def check_resume_dir(resume: str) -> Path:
    """A run directory to continue, taken for this process: a run still training there is named
    before anything else (it may not have written its last.ckpt yet)."""
    run_dir = Path(resume)
    if (
        not (run_dir / ".hydra" / "overrides.yaml").is_file()
        or not (run_dir / ".hydra" / "hydra.yaml").is_file()
    ):
        raise UserError(
            f"resume={resume} is not a run directory written by experiments.train (no .hydra/overrides.yaml); pass one under outputs/runs/."
        )
    own(run_dir, "resume")
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise UserError(
            f"resume={resume} has no checkpoints/last.ckpt to continue from; start a new run instead."
        )
    return run_dir


RESUME_ONE_RUN = "resume= continues one run; run it without -m (a sweep run again into its directory resumes its unfinished jobs)."

# What resume= may change of a run: how long to train, where its data now lives, what runs it.
RESUME_MAY_CHANGE = (
    "trainer.max_epochs",
    "trainer.accelerator",
    "trainer.devices",
    "data.root",
    "data.cache_dir",
    "data.download",
    "callbacks.progress.",
)
RESUME_IGNORED = ("resume", "ckpt_path", "run_dir", "fail_fast", "optimized_metric")


def check_continuation(cfg: DictConfig, run_dir: Path) -> None:
    """resume= continues a run as it was configured: refuse, before anything is written, a change
    that would make it another run, and a continuation with nothing left to train."""
    from omegaconf import OmegaConf

    from experiments.core.state import read_record

    saved = flatten(
        OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=False)
    )
    now = flatten(OmegaConf.to_container(cfg, resolve=False))
    changed = sorted(
        k
        for k in set(saved) | set(now)
        if saved.get(k) != now.get(k)
        and not k.startswith(RESUME_IGNORED)
        and not k.startswith(RESUME_MAY_CHANGE)
    )
    if changed:
        shown = ", ".join(f"{k}={now.get(k)}" for k in changed[:3]) + (
            f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        )
        raise UserError(
            f"resume={run_dir} continues that run with its own config, but {shown} would change it; only "
            f"{', '.join(k.rstrip('.') for k in RESUME_MAY_CHANGE)} may change (to train from its weights with other "
            f"settings, start a new run with ckpt_path={run_dir}/checkpoints/last.ckpt)."
        )
    if (key := schedule_fixed_to_length(saved, now)) is not None:
        raise UserError(
            f"resume={run_dir} with trainer.max_epochs={now.get('trainer.max_epochs')} cannot continue its schedule, laid out over its "
            f"{saved.get('trainer.max_epochs')} epochs ({key}); train a new run with trainer.max_epochs={now.get('trainer.max_epochs')} instead."
        )
    record = read_record(run_dir) or {}
    if record.get("status") == "diverged":
        raise UserError(
            f"resume={run_dir} diverged ({record.get('reason')}); continuing it would diverge again: start a new run with other settings."
        )
    import torch

    epoch = int(
        torch.load(
            run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
        ).get("epoch", 0)
    )
    done = int(record.get("epochs") or 0) if record.get("status") == "finished" else epoch
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and max_epochs != -1 and max_epochs <= done:
        what = (
            f"finished its {done} epochs"
            if record.get("status") == "finished"
            else f"reached epoch {done + 1}"
        )
        raise UserError(
            f"resume={run_dir} {what}; pass trainer.max_epochs above {done} to train longer."
        )


def schedule_fixed_to_length(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The scheduler key that ties a run's schedule to its length, when resume= changes the length:
    a value taken from trainer.max_epochs (cosine's T_max), or OneCycleLR's steps left to the fit."""
    if saved.get("trainer.max_epochs") == now.get("trainer.max_epochs"):
        return None
    for key, value in saved.items():
        if key.startswith("scheduler.") and "trainer.max_epochs" in str(value):
            return f"{key}={value}"
    if (
        str(saved.get("scheduler._target_", "")).endswith("OneCycleLR")
        and saved.get("scheduler.total_steps") is None
        and saved.get("scheduler.epochs") is None
    ):
        return "scheduler.total_steps=null, the fit's steps"
    return None


def first_missing(folder: Path) -> Path | None:
    """The outermost folder of `folder`'s path that does not exist yet."""
    missing = None
    for candidate in [folder, *folder.parents]:
        if candidate.exists():
            break
        missing = candidate
    return missing


_created: dict[str, Path] = {}  # run directory -> the outermost folder this process made for it


# What a sweep writes at its root before its first job trains: Hydra's record of the sweep, and
# hydra/sweeper=optuna's study (experiments.core.search.JOURNAL) with the lock Optuna takes on it.
SWEEP_FILES = ("multirun.yaml", "optuna.journal", "optuna.journal.lock")


def hydras_own(path: Path, sweep_made_here: bool = False) -> bool:
    """What Hydra writes into a job's directory before the job runs: `.hydra/` and the job's log
    (train.log, lr_find.log, ...); and, in a sweep directory this process made, the sweep's files
    and job directories holding nothing else yet."""
    if path.name == ".hydra" or (path.suffix == ".log" and path.is_file()):
        return True
    if not sweep_made_here:
        return False
    return path.name in SWEEP_FILES or (
        path.is_dir() and all(hydras_own(p) for p in path.iterdir())
    )


def discard(run_dir: Path) -> None:
    """Remove a run or sweep directory that a refused start left with nothing but Hydra's files,
    and the empty folders made for it. A sweep directory that existed before (a sweep run again
    into it) keeps its files."""
    run_dir = run_dir.absolute()
    top = _created.get(str(run_dir.resolve())) or _created.get(str(run_dir))
    if not run_dir.is_dir() or any(
        not hydras_own(p, sweep_made_here=top is not None) for p in run_dir.iterdir()
    ):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    folder = run_dir.parent
    while (
        top is not None
        and folder.is_relative_to(top)
        and folder.exists()
        and not any(folder.iterdir())
    ):
        folder.rmdir()
        folder = folder.parent


def discard_claimed() -> None:
    """Ctrl-C before a run started, wherever it landed: each directory this process claimed and
    Hydra has written nothing but its own files into goes, with the folders made for it."""
    for folder in sorted({*_held, *_created}, key=len, reverse=True):
        discard(Path(folder))


def claim_run_dir(config: DictConfig) -> None:
    """Before Hydra writes anything into a single run's directory: the directory is writable, free
    of any other run (unless resume= continues that run), and owned by this process."""
    if config.get("resume"):
        check_resume_dir(str(config.resume))
        return
    run_dir = Path(str(config.hydra.run.dir))
    if inherited(run_dir):
        return
    created = not run_dir.exists()
    if (top := first_missing(run_dir)) is not None:
        _created[str(run_dir.resolve())] = top.resolve()
    if not created and (traces := run_traces(run_dir)):
        raise UserError(
            f"hydra.run.dir={run_dir} already holds a run ({', '.join(traces)}); pick another directory, or resume={run_dir} to continue it."
        )
    check_writable("hydra.run.dir", run_dir)
    try:
        own(run_dir, "hydra.run.dir")
    except UserError:
        if created:
            run_dir.rmdir()
        raise
    # A run started at the same moment may have written there between the check and the lock.
    if run_traces(run_dir):
        raise UserError(f"hydra.run.dir={run_dir} already holds a run; pick another directory.")


def claim_sweep_dir(sweep_dir: Path, shared: bool = False) -> None:
    """Before a sweep writes anything: its directory holds no run, is writable, and is owned by
    this process (a sweep run again into it later resumes it), or, shared, by the workers of one
    search together."""
    if (top := first_missing(sweep_dir)) is not None:
        _created[str(sweep_dir.absolute())] = top.absolute()
    if traces := [t for t in run_traces(sweep_dir) if not t.startswith("events.out")]:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} holds a run ({', '.join(traces)}), not a sweep; a sweep "
            "writes each job into a folder of its own: pick another directory."
        )
    check_writable("hydra.sweep.dir", sweep_dir)
    own(sweep_dir, "hydra.sweep.dir", shared)


def sweep_job_dirs(
    sweep_dir: Path, jobs: list[list[str]], names: list[str], exclude: tuple[str, ...] = ()
) -> list[str]:
    """Each job's folder in its sweep, relative to it. A job that already ran there keeps its
    folder, found by the overrides its metrics.json records (job_identity), whatever that folder is
    called: a sweep run again with another key swept, or one written by an older version, still
    finds its finished jobs. A new job gets its name (job_names), with `~2`, `~3`, ... where that
    folder holds another job, so two jobs never share one."""
    from experiments.core.overrides import job_identity, job_names
    from experiments.core.state import read_record

    found: dict[tuple[str, ...], str] = {}
    for path in sorted(sweep_dir.glob(f"**/{METRICS}")) if sweep_dir.is_dir() else []:
        record = read_record(path.parent) or {}
        if isinstance(record.get("overrides"), list):
            relative = path.parent.relative_to(sweep_dir).as_posix()
            found.setdefault(job_identity(record["overrides"], exclude), relative)
    holders = {folder: identity for identity, folder in found.items()}
    dirs = []
    for job, name in zip(jobs, names):
        identity = job_identity(job, exclude)
        if identity not in found:
            folder = name
            if clashes(folder, holders):
                # another job has that name (a fixed value changed since: seed=0 then seed=1):
                # the name says what sets this one apart from it, then ~2, ~3, ...
                other = holders.get(folder, ())
                apart = job_names([[o for o in identity if o not in other]])[0]
                folder = name = f"{name},{apart}"
            n = 1
            while clashes(folder, holders):
                n += 1
                folder = f"{name}~{n}"
            found[identity] = folder
            holders[folder] = identity
        dirs.append(found[identity])
    return dirs


def clashes(folder: str, holders: dict[str, Any]) -> bool:
    """Whether a job's folder would be another job's, or inside or around one."""
    return folder in holders or any(
        t.startswith(f"{folder}/") or folder.startswith(f"{t}/") for t in holders
    )
