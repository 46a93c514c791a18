"""Every numeric value a user can set in conf/, with the values it may take: one table, read by the
checks (experiments.core.config.check_values for a job's config, the sweep's start for
hydra.sweeper and hydra.launcher) and by the test that walks conf/ for keys it lacks.

A domain is a kind (an integer or a number), bounds (open or closed), and the special values a
key also takes (null, -1, auto) with what they mean. A value outside is one sentence naming the
key, the value and what would be valid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from experiments.core.errors import UserError


@dataclass(frozen=True)
class Domain:
    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    special: tuple[tuple[Any, str], ...] = ()  # (value, what it means)
    items: int | None = None  # a list of this many values, each in the domain (betas)
    list_of: bool = False  # a non-empty list of values in the domain (model.hidden)

    def holds(self, value: Any) -> bool:
        if any(value is v or (type(value) is type(v) and value == v) for v, _ in self.special):
            return True
        if self.items is not None or self.list_of:
            values = list(value) if isinstance(value, (list, tuple, ListConfig)) else None
            if values is None or (self.items is not None and len(values) != self.items):
                return False
            return bool(values) and all(self.scalar(v) for v in values)
        return self.scalar(value)

    def scalar(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.integer and self.low == 1 and self.high is None:
            kind = "a positive integer"
        elif not self.integer and self.low == 0 and self.low_open and self.high is None:
            kind = "a positive number"
        elif self.low == 0 and self.high == 1 and self.low_open and self.high_open:
            kind += " strictly between 0 and 1"
        elif self.low is not None and self.high is not None:
            left, right = ("(" if self.low_open else "["), (")" if self.high_open else "]")
            kind += f" in {left}{number(self.low)}, {number(self.high)}{right}"
        elif self.low is not None:
            kind += f" {'above' if self.low_open else 'of at least'} {number(self.low)}"
        elif self.high is not None:
            kind += f" {'below' if self.high_open else 'of at most'} {number(self.high)}"
        else:
            kind = "a finite number" if not self.integer else kind
        if self.items is not None:
            kind = f"a list of {self.items} values, each {kind}"
        elif self.list_of:
            kind = f"a non-empty list, each value {kind}"
        extra = [
            f"{'null' if value is None else value} ({meaning})" for value, meaning in self.special
        ]
        if len(extra) == 1:
            kind += f" or {extra[0]}"
        elif extra:
            kind += ", " + ", ".join(extra[:-1]) + f" or {extra[-1]}"
        return kind

    def outside(self) -> list[Any]:
        """Values just outside, for the test that walks the table: past each bound, a wrong kind."""
        wrong: list[Any] = ["abc", True, math.nan, math.inf]
        if self.low is not None:
            wrong.append(self.low if self.low_open else self.low - (1 if self.integer else 1e-9))
        if self.high is not None:
            wrong.append(self.high if self.high_open else self.high + (1 if self.integer else 1e-9))
        if self.integer:
            wrong.append(2.5)
        if self.items is not None:
            wrong = [[v] * self.items for v in wrong[2:]] + [[], "abc"]
        elif self.list_of:
            wrong = [[v] for v in wrong[1:]] + [[]]
        return [v for v in wrong if not self.holds(v)]


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def positive_int(*special: tuple[Any, str]) -> Domain:
    return Domain(integer=True, low=1, special=special)


def counting(*special: tuple[Any, str]) -> Domain:
    return Domain(integer=True, low=0, special=special)


POSITIVE = Domain(low=0, low_open=True)
NON_NEGATIVE = Domain(low=0)
FINITE = Domain()
FRACTION = Domain(low=0, high=1, low_open=True, high_open=True)
UNIT = Domain(low=0, high=1)  # [0, 1]
BELOW_ONE = Domain(low=0, high=1, high_open=True)  # [0, 1)
SEED = Domain(integer=True, low=0, high=2**32 - 1)
# Keys torch checks itself on a trial step (experiments.build.check_optimizer), in its words.
BY_TORCH = ("optimizer.betas",)
# Keys another entry point reads (conf/lr_find.yaml, gradcheck.yaml, landscape.yaml) and the
# sweep's own (hydra.): checked where those read them, not in a training job's config.
ELSEWHERE = ("hydra.", "lr_find.", "gradcheck.", "landscape.")

DOMAINS: dict[str, Domain] = {
    # conf/train.yaml
    "seed": SEED,
    # conf/data/
    "data.seed": SEED,
    "data.batch_size": positive_int((None, "the whole split as one batch")),
    "data.eval_batch_size": positive_int((None, "the whole split as one batch")),
    "data.val_fraction": FRACTION,
    "data.test_fraction": FRACTION,
    "data.val_size": positive_int(),
    "data.n_samples": Domain(integer=True, low=3),
    "data.noise": NON_NEGATIVE,
    "data.x_min": FINITE,
    "data.x_max": FINITE,
    "data.weight": FINITE,
    "data.bias": FINITE,
    "data.input_scale": Domain(low=0, low_open=True, special=((None, "the raw readings"),)),
    "data.mean": FINITE,
    "data.std": POSITIVE,
    # conf/model/
    "model.hidden": Domain(integer=True, low=1, list_of=True),
    "model.init_weight": Domain(special=((None, "PyTorch's random initialisation"),)),
    "model.init_bias": Domain(special=((None, "PyTorch's random initialisation"),)),
    # conf/optimizer/
    "optimizer.lr": POSITIVE,
    "optimizer.momentum": BELOW_ONE,
    "optimizer.dampening": UNIT,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.eps": POSITIVE,
    "optimizer.alpha": BELOW_ONE,
    "optimizer.betas": Domain(low=0, high=1, high_open=True, items=2),
    "optimizer.lr_decay": NON_NEGATIVE,
    "optimizer.initial_accumulator_value": NON_NEGATIVE,
    # conf/scheduler/
    "scheduler.step_size": positive_int(),
    "scheduler.gamma": Domain(low=0, high=1, low_open=True),  # above 1 the lr would grow
    "scheduler.eta_min": NON_NEGATIVE,
    "scheduler.factor": FRACTION,
    "scheduler.patience": counting(),
    "scheduler.threshold": NON_NEGATIVE,
    "scheduler.pct_start": FRACTION,
    "scheduler.frequency": positive_int(),
    # conf/trainer/
    "trainer.max_epochs": positive_int((-1, "train until stopped"), (None, "Lightning's default")),
    "trainer.check_val_every_n_epoch": positive_int((None, "validate by steps instead")),
    "trainer.log_every_n_steps": positive_int((None, "Lightning's default")),
    "trainer.accumulate_grad_batches": positive_int(),
    "trainer.devices": positive_int(("auto", "every device there is")),
    "trainer.num_nodes": positive_int(),
    "trainer.num_sanity_val_steps": Domain(integer=True, low=-1),
    "trainer.gradient_clip_val": Domain(low=0, special=((None, "no clipping"),)),
    # conf/callbacks/
    "callbacks.model_checkpoint.save_top_k": Domain(integer=True, low=-1),
    "callbacks.progress.refresh_seconds": NON_NEGATIVE,
    "callbacks.progress.plain_every_seconds": NON_NEGATIVE,
    # conf/dynamics/
    "dynamics.every_n_steps": positive_int(),
    "dynamics.noise_samples": Domain(integer=True, low=2),
    "dynamics.lanczos_steps": positive_int(),
    "dynamics.trace_samples": positive_int(),
    # conf/hydra/sweeper/
    "hydra.sweeper.seeds": positive_int(),
    "hydra.sweeper.search_seeds": positive_int(),
    "hydra.sweeper.studies": positive_int(),
    "hydra.sweeper.target": Domain(
        special=((None, "the best configuration's mean within hydra.sweeper.tolerance"),)
    ),
    "hydra.sweeper.tolerance": NON_NEGATIVE,
    "hydra.sweeper.n_trials": positive_int(),
    "hydra.sweeper.n_jobs": positive_int(),
    "hydra.sweeper.sampler.seed": Domain(integer=True, low=0, special=((None, "a random seed"),)),
    # conf/hydra/launcher/
    "hydra.launcher.n_jobs": Domain(integer=True, low=1, special=((-1, "one per core"),)),
    "hydra.launcher.timeout_min": positive_int(),
    "hydra.launcher.mem_gb": Domain(low=0, low_open=True, special=((None, "no limit"),)),
    "hydra.launcher.cpus_per_task": positive_int((None, "the launcher's default")),
    "hydra.launcher.gpus_per_node": counting((None, "the launcher's default")),
    "hydra.launcher.tasks_per_node": positive_int(),
    "hydra.launcher.nodes": positive_int(),
    "hydra.launcher.array_parallelism": positive_int(),
    "hydra.launcher.max_num_timeout": counting(),
    "hydra.launcher.signal_delay_s": counting(),
    # the other entry points: conf/lr_find.yaml, conf/gradcheck.yaml, conf/landscape.yaml
    "lr_find.min_lr": POSITIVE,
    "lr_find.max_lr": POSITIVE,
    "lr_find.num_training": Domain(integer=True, low=2),
    "lr_find.early_stop_threshold": Domain(
        low=1, low_open=True, special=((None, "never stop early"),)
    ),
    "gradcheck.coordinates": positive_int(),
    "gradcheck.eps": POSITIVE,
    "gradcheck.tolerance": POSITIVE,
    "landscape.resolution": Domain(integer=True, low=3),
    "landscape.margin": NON_NEGATIVE,
    "landscape.samples": positive_int(),
    "landscape.batch": positive_int(),
    "landscape.seed": SEED,
}


def check(key: str, value: Any, name: str | None = None) -> None:
    """`value` of `key` lies in its domain, or one sentence says what would (naming the key as
    `name`, where the command line spells it otherwise)."""
    domain = DOMAINS[key]
    if not domain.holds(value):
        shown = (
            OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
        )
        # as the command line and YAML spell them: true, false, null
        spelled = {True: "true", False: "false"}.get(shown) if isinstance(shown, bool) else None
        spelled = "null" if shown is None else spelled
        raise UserError(f"{name or key} must be {domain.describe()}, got {spelled or repr(shown)}.")


def check_config(cfg: DictConfig, only: str | None = None, root: str = "") -> None:
    """Every key of the table found in `cfg`, checked: those starting with `only` (for a training
    job's config, None: all but ELSEWHERE's), each looked up without `root` (landscape.yaml's
    keys are its top level)."""
    for key in DOMAINS:
        if only is None and (key.startswith(ELSEWHERE) or key in BY_TORCH):
            continue
        if only is not None and not key.startswith(only):
            continue
        found = OmegaConf.select(cfg, key.removeprefix(root), default=MISSING)
        if found is not MISSING:
            check(key, found, key.removeprefix(root))


MISSING = object()


def help_text() -> str:
    """The table as `--help` shows it: one line per key a training job reads."""
    keys = [k for k in DOMAINS if not k.startswith(ELSEWHERE)]
    width = max(map(len, keys))
    return "\n".join(f"  {k:<{width}}  {DOMAINS[k].describe()}" for k in keys)
