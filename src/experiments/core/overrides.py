"""The command line as Hydra reads it, and a mistake in it as one sentence: paths quoted where
Hydra would split them, `resume=` made into the run's own overrides, and Hydra's and OmegaConf's
errors (an unknown key or option, a bad value, a `_target_` that cannot be built) turned into
one line naming the key and what would be valid. Plain code: no torch, no Lightning."""

from __future__ import annotations

import errno
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

from experiments.core.config import job_dir_name


def quote_value(value: str) -> str:
    """A value as Hydra's override grammar reads it literally, whatever it holds (`=`, `,`, spaces)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


PATH_KEYS = ("resume=", "run=", "ckpt_path=")  # values that are one path, never a sweep


def quote_paths(argv: list[str]) -> list[str]:
    """A path named by a sweep's overrides (`=`, `,`) quoted, so Hydra reads it as one path."""
    quoted = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if (
            arg.startswith(PATH_KEYS)
            and value
            and value[0] not in "'\""
            and any(c in value for c in "=,[]{}() ")
        ):
            arg = f"{key}={quote_value(value)}"
        quoted.append(arg)
    return quoted


MULTIRUN = ("-m", "--multirun")


def prepare_arguments(argv: list[str]) -> list[str]:
    """-m or --multirun anywhere on the line comes first, as Hydra's parser needs it.
    `resume=<run dir>` continues a run with its own config: the run's own command-line overrides
    come first, then the new ones. Paths are quoted where Hydra would split them."""
    argv = quote_paths(argv)
    # -m anywhere on the line: Hydra's parser takes its flags only before the overrides
    argv = [a for a in argv if a in MULTIRUN] + [a for a in argv if a not in MULTIRUN]
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

        original = [
            str(o) for o in OmegaConf.load(saved) if not str(o).startswith(("sweep=", "fail_fast="))
        ]  # how it was swept
    rest = overrides_of([a for a in argv if a is not resume])
    # Hydra's flags (-m, --cfg job) stay first
    flags = [a for a in argv if a is not resume and a not in rest]
    given = {key_of(a) for a in rest}
    return [
        *flags,
        *(o for o in original if key_of(o) not in given),
        *rest,
        f"resume={quote_value(run_dir)}",
    ]


def key_of(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def unquoted(value: str) -> str:
    return value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else value


def job_identity(
    overrides: list[str], exclude: tuple[str, ...] | list[str] = ()
) -> tuple[str, ...]:
    """What makes a sweep's job the job it is: its overrides, in any order, without hydra's own and
    those that only say where or how it runs (`exclude`: hydra.job.config.override_dirname's
    exclude_keys). A sweep run again finds a job's directory by this, whatever the folder's name."""
    return tuple(
        sorted(
            o for o in overrides if not key_of(o).startswith("hydra") and key_of(o) not in exclude
        )
    )


def job_names(
    jobs: list[list[str]],
    exclude: tuple[str, ...] | list[str] = (),
    groups: tuple[str, ...] | set[str] = (),
    always: tuple[str, ...] = (),
) -> list[str]:
    """Each job's short name in its sweep: what sets it apart from the sweep's other jobs, config
    groups by their option and other keys by their last part, `seed` last
    (`adam,lr=0.464,seed=3`); every override where nothing varies; keys in `always` even where
    they do not vary. Two jobs may get one name only where their values differ in a `/` alone."""
    parsed = [
        {key_of(o): o.partition("=")[2] for o in job if key_of(o) not in exclude} for job in jobs
    ]
    parsed = [{k: v for k, v in p.items() if not k.startswith("hydra")} for p in parsed]
    keys = list(dict.fromkeys(k for p in parsed for k in p))
    varying = [k for k in keys if k in always or len({p.get(k) for p in parsed}) > 1] or keys
    varying.sort(key=lambda k: (k not in groups, k == "seed"))
    last = [k.rsplit(".", 1)[-1] for k in varying]
    shown = {k: k if last.count(s) > 1 else s for k, s in zip(varying, last)}
    names = []
    for num, values in enumerate(parsed):
        parts = [
            unquoted(values[k]) if k in groups else f"{shown[k]}={unquoted(values[k])}"
            for k in varying
            if k in values
        ]
        names.append(job_dir_name(",".join(parts), num))
    return names


def flag_error(error: BaseException) -> str | None:
    """One sentence for Hydra's refusal of two of its flags together (`-m --cfg job`)."""
    if isinstance(error, ValueError) and str(error).startswith("Only one of --run, --multirun"):
        return (
            f"{error}; to see one job's config, drop -m and give one value per key with --cfg job."
        )
    return None


def disk_full(error: BaseException, run_dir: Path | None = None) -> str | None:
    """One sentence for a write that failed because the disk is full, wherever it surfaced (an
    exception's cause or context); with `run_dir`, how to continue that run."""
    seen: BaseException | None = error
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:  # an exception's context can loop back
        visited.add(id(seen))
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            if run_dir is None:
                return f"no space left on the device of {seen.filename or 'the output directory'}; free some space and run again."
            where = f" ({seen.filename})" if seen.filename else ""
            return f"no space left on the device of {run_dir}{where}; free some space, then resume={run_dir} continues from its last checkpoint."
        seen = seen.__cause__ or seen.__context__
    return None


def overrides_of(argv: list[str]) -> list[str]:
    """The key=value and group=option arguments of a command line, without Hydra's own flags."""
    flags_with_value = {
        "-cn",
        "--config-name",
        "-cp",
        "--config-path",
        "-cd",
        "--config-dir",
        "--cfg",
        "-c",
        "--package",
        "-p",
        "--info",
        "-i",
        "--experimental-rerun",
    }
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags_with_value:
            skip = arg not in ("--info", "-i")
        elif not arg.startswith("-"):
            kept.append(arg)
    return kept


def config_error(error: Exception, argv: list[str], config_name: str) -> str | None:
    """One sentence for a mistake Hydra or OmegaConf found in the command line; None for anything else."""
    from hydra.errors import HydraException, InstantiationException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(error, (HydraException, OmegaConfBaseException)):
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    head, rest = (lines[0], lines[1:]) if lines else (type(error).__name__, [])
    overrides = overrides_of(argv)
    if isinstance(error, OverrideParseException):
        unusual = next((o for o in overrides if not o.isascii() or " " in o), None)
        if unusual is not None:
            key, _, value = unusual.partition("=")
            return f"{unusual}: Hydra reads a value with spaces or non-ASCII characters only in quotes; pass it as '{key}=\"{value}\"'."
        return (
            f"{error}".splitlines()[0].rstrip(".")
            + "; see `--help` for the form of key=value and group=option."
        )
    if isinstance(error, InstantiationException):
        return instantiation_error(error, overrides)
    several = re.match(
        r"Ambiguous value for argument '(.+)'|Sweep parameters '(.+)' requires", head
    )
    if several:
        return several_values(several[1] or several[2], overrides, config_name)
    missing = re.match(r"Could not override '([^']+)'", head)
    if missing and "No match in the defaults list" in head:  # a group the defaults do not pick
        added = next((w for line in rest for w in line.split() if w.startswith("+")), None)
        given = added[1:] if added else f"{missing[1]}=<option>"
        return (
            f"{given} picks an option of the config group {missing[1]}, which this config's defaults "
            f"list does not include; add the group with a plus: +{given}."
        )
    if missing and "+" + missing[1] in " ".join(rest):
        return unknown_key(
            missing[1], [o for o in overrides if key_of(o) != missing[1]], config_name
        )
    if rest and rest[0].startswith("Available options"):
        options = list(itertools.takewhile(lambda line: ":" not in line, rest[1:]))
        return f"{head}; {rest[0][0].lower()}{rest[0][1:].rstrip(':')}: {', '.join(options)}."
    if "Missing mandatory value" in head and (key := re.search(r"full_key: (\S+)", str(error))):
        return f"{key[1]}= is required; see `--help`."
    return head.rstrip(".") + "."


def several_values(given: str, overrides: list[str], config_name: str) -> str:
    """The sentence for a value list Hydra would not sweep. Hydra reads the mode (`hydra.mode`,
    which a sweep preset sets) from a composition of the whole command line, so any other mistake
    on it makes the sweep a single run that blames the list: compose the sweep's jobs one value
    at a time to find and name that mistake."""
    from hydra import compose, initialize_config_dir

    from experiments.core.config import CONF_DIR

    job = overrides
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            for job in some_jobs(overrides):
                compose(config_name, overrides=job)
    except Exception as error:  # the job's own mistake, in the command line's words
        message = config_error(error, job, config_name)
        if message is not None:
            return message
    advice = one_value(given)
    what = "values" if advice else "options"
    return f"{given} gives {key_of(given)} several {what}: add -m to run a job for each" + (
        f", or {advice}." if advice else "."
    )


def one_value(override: str) -> str | None:
    """How a value list becomes one value: `write a list as k=[a,b] or quote a string as
    k='a,b'`; None for a config group, whose options are never one value."""
    from experiments.core.config import CONF_DIR

    key, _, values = override.partition("=")
    if (CONF_DIR / key_of(override)).is_dir():
        return None
    return f"write a list as {key}=[{values}] or quote a string as {key}='{values}'"


def instantiation_error(error: Exception, overrides: list[str]) -> str:
    """One sentence for a `_target_` (given on the command line or in a config) that Hydra could
    not import or call, naming its key."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    head = lines[0] if lines else type(error).__name__
    target = re.search(r"target '([^']+)'", head)
    name = target[1].rsplit(".", 1)[-1] if target else ""
    full_key = re.search(r"full_key: (\S+)", str(error))
    given = (
        full_key[1]
        if full_key
        else next((key_of(o) for o in overrides if name and name in o), None)
    )
    cause = (
        f": {error.__cause__}" if error.__cause__ is not None and "Error in call" in head else ""
    )
    what = head.split(", set env var HYDRA_FULL_ERROR")[0].rstrip(":.")
    message = " ".join(f"{what}{cause}".split())
    return (
        f"{given}: {message}; give a class that exists, with arguments it takes."
        if given
        else f"{message}."
    )


def some_jobs(overrides: list[str], limit: int = 32) -> Iterator[list[str]]:
    """A sweep's first jobs, each as the single-valued overrides Hydra's compose API takes."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    axes = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            axes.append([override.input_line])
        elif override.is_discrete_sweep():
            axes.append(
                [
                    f"{override.get_key_element()}={value}"
                    for value in override.sweep_string_iterator()
                ]
            )
    return (list(job) for job in itertools.islice(itertools.product(*axes), limit))


# Keys a lightning-hydra-template config (or search) brings, and where the setting lives here.
TEMPLATE_KEYS = {
    "model.optimizer.": ("optimizer.", "the optimizer is a config group of its own"),
    "model.scheduler.": ("scheduler.", "the learning-rate schedule is a config group of its own"),
    "model.lr": ("optimizer.lr", "the optimizer is a config group of its own"),
    "model.net.": (
        "model.hidden",
        "the hidden layer widths are one list, such as model.hidden=[64,128]",
    ),
    "datamodule.": ("data.", "the data module's config group is data"),
}


def template_key(key: str) -> str | None:
    """The sentence for a lightning-hydra-template key, naming this package's for it."""
    for theirs, (ours, why) in TEMPLATE_KEYS.items():
        if key == theirs or (theirs.endswith(".") and key.startswith(theirs)):
            here = ours + key[len(theirs) :] if ours.endswith(".") else ours
            return f"{key} is lightning-hydra-template's key; here it is {here} ({why})."
    return None


def unknown_key(key: str, others: list[str], config_name: str) -> str:
    """The sentence for a key that is not in the config: the closest one that is, and its siblings."""
    import difflib

    if (sentence := template_key(key)) is not None:
        return sentence

    from hydra import compose, initialize_config_dir
    from omegaconf import DictConfig, OmegaConf

    from experiments.core.config import CONF_DIR

    parent, _, leaf = key.rpartition(".")
    where, node = parent or "the config", None
    hydra_key = key.startswith("hydra.")  # a sweeper's or launcher's setting
    skipped = ("hydra.",) if hydra_key else ("hydra.", "hydra/")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            # the job that lacks the key
            for job in some_jobs([o for o in others if not o.startswith(skipped)]):
                node = (
                    OmegaConf.select(
                        compose(config_name, overrides=job, return_hydra_config=hydra_key), parent
                    )
                    if parent
                    else None
                )
                if isinstance(node, DictConfig) and leaf not in node:
                    choice = next((o for o in job if key_of(o) == parent), None)
                    where = (
                        f"{parent} ({choice})"
                        if choice and len(list(some_jobs(others, 2))) > 1
                        else where
                    )
                    break
            if not parent:
                node = compose(
                    config_name,
                    overrides=next(some_jobs([o for o in others if not o.startswith(skipped)])),
                )
    except Exception:  # the rest of the command line has its own mistake: name this one plainly
        node = None
    if not isinstance(node, DictConfig):
        return f"{key} is not a key of {where}; `--cfg job` shows the keys there are."
    names = [str(k) for k in node.keys() if not str(k).startswith("_")]
    if not names:
        return f"{key} is not a key of {where}, which holds nothing with the option chosen; pick an option for {parent or 'it'} first (`--help` lists them)."
    initials = {
        name: "".join(word[0] for word in name.split("_") if word) for name in names + [leaf]
    }
    close = [
        n for n in names if initials[n] == leaf or initials[leaf] == n
    ] or difflib.get_close_matches(leaf, names, n=1, cutoff=0.5)
    guess = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    return f"{key} is not a key of {where}: {guess}{parent or 'the config'} has {', '.join(names)}."
