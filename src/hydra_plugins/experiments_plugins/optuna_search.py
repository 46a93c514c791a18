"""hydra/sweeper=optuna: Bayesian search on current Optuna, through its ask-and-tell API.

It takes the official hydra-optuna-sweeper plugin's settings (that plugin requires Optuna < 3):
`sampler`, `direction`, `study_name`, `storage`, `n_trials`, `n_jobs`, `custom_search_space` and
`params` in Hydra's sweep syntax, plus `pruner`:

    interval(a, b)             a float (or an integer, when both ends are) drawn uniformly
    tag(log, interval(a, b))   the same on a log scale
    int(interval(a, b))        an integer
    choice(x, y, z)            one of the values (a config group's options too)
    range(a, b, step)          one of a grid of numbers

Each trial is a job with its own directory (`trial007,optimizer.lr=0.0123`). `n_jobs` trials at a
time go to the launcher as one batch, so hydra/launcher=parallel trains them side by side and
hydra/launcher=vectorized as one population. The objective is each job's best `monitor` value;
`direction` defaults to the metric's own (`monitor_mode`). A diverged or failed job is told to
Optuna as failed and the study goes on. The study lives in the sweep directory (a journal file)
unless `storage` names another, so running the same command into the same `hydra.sweep.dir`
continues it: trial numbers go on. At the end: the usual table, the best trial's command line,
and Optuna's optimisation history and parameter importances as PNGs.

The implementation (hydra_plugins/experiments_plugins/optuna_sweeper.py is the thin plugin class
Hydra instantiates): the objective and its direction, the study opened or continued, the
ask-and-tell loop over the launcher, and the report."""

from __future__ import annotations

import logging
import math
import os
import socket
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from experiments.core.overrides import key_of
from hydra_plugins.experiments_plugins.optuna_space import built, distribution, first_value, literal

log = logging.getLogger(__name__)


# keys that mean nothing to the best trial run alone
SWEEP_ONLY = ("sweep", "fail_fast", "trial", "optimized_metric")


def objective(config: DictConfig) -> tuple[str, str]:
    """The metric a study optimises and which of its values: the best of `monitor`, unless
    `optimized_metric` (lightning-hydra-template's key) names another: `val/acc_best` the best
    val/acc, `test/acc` its test value, `val/acc` its final value."""
    name = config.get("optimized_metric")
    if not name:
        return str(config.monitor), "best"
    name = str(name)
    if name.endswith("_best"):
        return name[: -len("_best")], "best"
    return name, "test" if name.startswith("test/") else "final"


def objective_value(record: dict[str, Any], metric: str, which: str) -> float | None:
    """A job's objective value from its metrics.json."""
    if which == "test":
        return (record.get("test") or {}).get(metric)
    return ((record.get("metrics") or {}).get(metric) or {}).get(which)


def check_continuation(study: Any, space: dict[str, Any], direction: str, sweep_dir: Path) -> None:
    """A continued study keeps its direction and each choice's options (Optuna cannot draw a
    categorical value from a list that changed)."""
    from optuna.distributions import CategoricalDistribution

    from experiments.core.config import UserError

    if study.direction.name.lower() != direction:
        raise UserError(
            f"the study in {sweep_dir} was asked to {study.direction.name.lower()}, this search to {direction}; continue it as it was, or start a new study in another hydra.sweep.dir."
        )
    for trial in study.get_trials(deepcopy=False):
        for name, earlier in trial.distributions.items():
            now = space.get(name)
            if isinstance(earlier, CategoricalDistribution) and now is not None and now != earlier:
                before = ",".join(map(str, earlier.choices))
                raise UserError(
                    f"{name} chooses from other values than the study in {sweep_dir} did (choice({before})); a continued study keeps its "
                    f"choices: give {name}=choice({before}), or start a new study in another hydra.sweep.dir."
                )


WORKER = "experiments_worker"  # a trial's user attribute: the host and process that trains it


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_alive(worker: str | None) -> bool:
    """Whether the worker process that asked for a trial still runs: on this host, its process
    is looked up; another host's is taken as alive (its trial is left to it)."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return host != "" and host != socket.gethostname()
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


CLAIM_S = 60  # a trial asked for longer ago than this and still unclaimed: its worker died


def abandoned(trial: Any) -> bool:
    """Whether a running trial of a shared search has no live worker: its worker's process is
    gone, or it never claimed the trial (a worker claims it just after asking for it, in a
    second write to the storage: one asked for a moment ago is left to that worker)."""
    import datetime

    worker = trial.user_attrs.get(WORKER)
    if worker is None:
        started = trial.datetime_start
        return started is None or (datetime.datetime.now() - started).total_seconds() > CLAIM_S
    return not worker_alive(worker)


def last_worker(study: Any, sweep_dir: Path) -> bool:
    """Whether this worker of a shared search writes its report: no other worker's trial is still
    running, and no worker has reported this many trials yet (decided under a lock, so once)."""
    import fcntl

    from optuna.trial import TrialState

    with open(sweep_dir / ".report.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return False
        reported, count = sweep_dir / ".reported", str(len(study.trials))
        if reported.is_file() and reported.read_text() == count:
            return False
        reported.write_text(count)
        return True


def continued_sampler(setting: Any, sampler: Any, trials: int) -> Any:
    """The sampler for a study that already holds `trials` trials: a seeded one seeded anew from
    its seed and that count (repeatable, yet not the first run's draws again)."""
    if OmegaConf.is_dict(setting) and setting.get("seed") is not None:
        from hydra.utils import instantiate

        return instantiate(setting, seed=(int(setting.seed) + trials) % 2**32)
    if sampler is not None and hasattr(sampler, "reseed_rng"):
        sampler.reseed_rng()
    return sampler


class OptunaSearch(Sweeper):
    """The implementation behind optuna_sweeper.OptunaSweeper, a Sweeper itself as the official
    plugin's implementation class is (its batches are validated as Hydra validates them)."""

    def __init__(
        self,
        sampler: Any = None,
        direction: Any = None,
        storage: Any = None,
        study_name: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 2,
        params: dict[str, str] | None = None,
        custom_search_space: str | None = None,
        pruner: Any = None,
        search_space: Any = None,  # the official plugin's old form, refused by check_settings
        max_failure_rate: float | None = None,
        shared: bool = False,
    ) -> None:
        self.settings = {
            "sampler": sampler,
            "direction": direction,
            "storage": storage,
            "study_name": study_name,
            "pruner": pruner,
        }
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.max_failure_rate = max_failure_rate
        self.params = dict(params or {})
        self.custom_search_space = custom_search_space
        self.shared = bool(shared)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra_plugins.experiments_plugins.grid_sweeper import forget_composed, launcher_context

        forget_composed()  # a second sweep in one process (experiments.api) composes anew
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=launcher_context(hydra_context, config),
            task_function=task_function,
            config=config,
        )

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Each trial composed as Hydra's loader composes it, once: the launcher takes that config."""
        from hydra_plugins.experiments_plugins.grid_sweeper import compose_all

        compose_all(self.hydra_context, self.config, batch)

    def direction(self) -> str:
        """Minimize or maximize: the objective metric's own direction (`monitor_mode` when it is
        the monitored metric); a configured direction must agree with it."""
        from experiments.build import import_class
        from experiments.core.config import UserError

        direction = self.settings["direction"]
        if OmegaConf.is_list(direction) or isinstance(direction, (list, tuple)):
            if len(direction) != 1:
                raise UserError(
                    f"hydra.sweeper.direction has {len(direction)} values, but hydra/sweeper=optuna optimises one objective, the monitored metric: give minimize or maximize."
                )
            direction = direction[0]
        metric, _ = objective(self.config)
        model = self.config.model
        directions = import_class(model._target_, "model")(
            **{k: v for k, v in model.items() if not str(k).startswith("_")}
        ).metric_directions()
        if metric not in directions:
            given = self.config.get("optimized_metric")
            raise UserError(
                f"optimized_metric={given} names {metric}, which this model does not log; pick one of {', '.join(directions)} (add _best for its best value)."
            )
        own = "maximize" if directions[metric] else "minimize"
        if metric == self.config.monitor and self.config.get("monitor_mode") in ("min", "max"):
            own = {"min": "minimize", "max": "maximize"}[self.config.monitor_mode]
        if direction and str(direction).rsplit(".", 1)[-1] != own:
            better = "higher" if own == "maximize" else "lower"
            raise UserError(
                f"hydra.sweeper.direction={str(direction).rsplit('.', 1)[-1]} contradicts {metric}, which is better when {better}; leave hydra.sweeper.direction null to take the metric's own direction."
            )
        return own

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from hydra.utils import get_method

        from experiments.core.config import UserError
        from experiments.core.overrides import job_names, quote_value
        from experiments.core.rundir import discard
        from experiments.core.search import DEFAULT_STUDY, study_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        try:
            space = {o.get_key_element(): distribution(o) for o in parsed if o.is_sweep_override()}
        except UserError:
            # the empty directory made for this sweep
            discard(Path(str(self.config.hydra.sweep.dir)))
            raise
        fixed = [
            f"{o.get_key_element()}={o.get_value_element_as_str()}"
            for o in parsed
            if not o.is_sweep_override()
        ]
        settings = self.settings
        # Every setting is checked before the sweep directory is touched: a mistake leaves nothing.
        direction, sampler, pruner = (
            self.direction(),
            built("sampler", settings["sampler"]),
            built("pruner", settings["pruner"]),
        )
        extend = get_method(self.custom_search_space) if self.custom_search_space else None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        one_job = [*fixed, *(f"{key}={literal(first_value(d))}" for key, d in space.items())]
        self.validate_batch_is_legal(
            [one_job]
        )  # a mistake stops the search before anything is written
        storage = None
        if settings["storage"]:  # a database of the user's: opened before anything is written
            try:
                storage = study_storage(settings["storage"], sweep_dir)
            except Exception as error:  # SQLAlchemy's and Optuna's errors, whatever the database
                discard(sweep_dir)
                first = (str(error).splitlines() or [type(error).__name__])[0]
                raise UserError(
                    f"hydra.sweeper.storage={settings['storage']} cannot be opened ({first}); give a database URL Optuna can open, such as sqlite:///study.db, or leave it null to keep the study in the sweep directory."
                ) from None
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage, name = (
            storage or study_storage(None, sweep_dir),
            settings["study_name"] or DEFAULT_STUDY,
        )
        # continued: checked before anything is written to it
        if name in optuna.study.get_all_study_names(storage):
            study = optuna.load_study(
                study_name=name, storage=storage, sampler=sampler, pruner=pruner
            )
            check_continuation(study, space, direction, sweep_dir)
        else:
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                direction=direction,
            )
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            # a run of this sweep killed earlier (shared: a dead worker's, not a live one's)
            if not self.shared or abandoned(stale):
                study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
        if study.trials or self.shared:
            # a continued study: a seeded sampler must not draw its first trials again; workers
            # of one search must not draw each other's (their seeds differ by process)
            study.sampler = continued_sampler(
                self.config.hydra.sweeper.get("sampler"),
                sampler,
                # (a multiplier, so that concurrent workers' counts cannot cancel their pids)
                len(study.trials) + (1_000_003 * os.getpid() if self.shared else 0),
            )
        self.notes(pruner)
        metric, which = objective(self.config)
        left = self.n_trials
        while left > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, left))]
            batch = []
            for trial in trials:
                trial.set_user_attr(WORKER, this_worker())
                if extend is not None:
                    extend(self.config, trial)
                sampled = [f"{key}={literal(value)}" for key, value in trial.params.items()]
                # trial007,adam,lr=0.0123: the trial and its sampled values, keys by their last part
                groups = set(self.config.hydra.runtime.choices)
                name = f"trial{trial.number:03d}," + job_names([sampled], groups=groups)[0]
                batch.append(
                    [
                        *fixed,
                        *sampled,
                        f"trial={trial.number}",
                        f"hydra.sweep.subdir={quote_value(name)}",
                    ]
                )
            self.validate_batch_is_legal(batch)
            self.launcher.launch(batch, initial_job_idx=trials[0].number)
            exhausted = False
            for trial, overrides in zip(trials, batch):
                exhausted |= self.tell(
                    study,
                    trial,
                    sweep_dir / overrides[-1].partition("=")[2].strip("'"),
                    metric,
                    which,
                )
            left = 0 if exhausted else left - len(trials)
            self.check_failures(study, trials)
        if self.shared and not last_worker(study, sweep_dir):
            from experiments.core.search import DEFERRED

            DEFERRED.add(str(sweep_dir.resolve()))  # the sweep's tables wait for the last worker
            print(
                f"This worker's trials are done; the last worker of the search to end writes its "
                f"report, once ({len(study.trials)} trials in the study now)."
            )
            return
        self.report(study, fixed, sweep_dir)

    def notes(self, pruner: Any) -> None:
        """One line each for settings that cannot do what they are set for."""
        trainer = self.config.trainer
        every, epochs = trainer.get("check_val_every_n_epoch") or 1, trainer.get("max_epochs")
        if pruner is not None and epochs not in (None, -1) and every >= epochs:
            log.warning(
                f"hydra.sweeper.pruner can stop a trial only at a validation before its last epoch, but these runs validate "
                f"every {every} epochs of {epochs}, so no trial will be pruned; set trainer.check_val_every_n_epoch below {epochs} for it to act."
            )
        launcher = str(self.config.hydra.launcher.get("_target_", ""))
        if self.n_jobs == 1 and launcher.endswith("VectorizedLauncher") and self.n_trials > 1:
            log.warning(
                "hydra.sweeper.n_jobs=1 hands the launcher one trial at a time, so hydra/launcher=vectorized trains each alone; set hydra.sweeper.n_jobs=10 to train 10 trials as one population."
            )

    def check_failures(self, study: Any, trials: list[Any]) -> None:
        """hydra.sweeper.max_failure_rate, as the official plugin reads it: the search stops when more
        than that share of a batch's trials failed (diverged or failed jobs)."""
        if self.max_failure_rate is None:
            return
        from optuna.trial import TrialState

        from experiments.core.config import UserError

        failed = sum(study.trials[t.number].state == TrialState.FAIL for t in trials)
        if failed / len(trials) > self.max_failure_rate:
            raise UserError(
                f"{failed} of the {len(trials)} trials of the last batch failed or diverged, more than hydra.sweeper.max_failure_rate="
                f"{self.max_failure_rate} allows, so the search stops (the study keeps every trial; run it again to continue)."
            )

    def rerun_command(self, fixed: list[str], params: dict[str, Any]) -> str:
        """The command that trains one trial alone: the search's fixed overrides and the trial's
        values, without the search (sweep=...). A search config of one's own (+hparams_search=...)
        is kept for the keys it sets, with its searchpath and hydra.mode=RUN so it does not search again."""
        import shlex

        from experiments.core.config import CONF_DIR

        choices = self.config.hydra.runtime.choices
        alone, search_group = [], False
        for override in fixed:
            key = key_of(override)
            if key in SWEEP_ONLY:
                continue
            alone.append(override)
            search_group |= key in choices and not (CONF_DIR / key).is_dir()
        searchpath = (
            [
                str(o)
                for o in self.config.hydra.overrides.hydra
                if str(o).startswith("hydra.searchpath=")
            ]
            if search_group
            else []
        )
        words = [
            *searchpath,
            *alone,
            *(f"{k}={literal(v)}" for k, v in params.items()),
            *(["hydra.mode=RUN"] if search_group else []),
        ]
        return " ".join(["python -m experiments.train", *map(shlex.quote, words)])

    @staticmethod
    def tell(study: Any, trial: Any, job_dir: Path, metric: str, which: str) -> bool:
        """What the job's metrics.json says of it, told to Optuna. True when the sampler has now
        tried its whole space (GridSampler, BruteForceSampler): they stop the study, which outside
        Study.optimize Optuna raises as a RuntimeError after recording the trial."""
        from optuna.trial import TrialState

        from experiments.core.state import read_record

        record = read_record(job_dir) or {"status": "failed"}
        best = objective_value(record, metric, which)
        try:
            if record.get("status") == "finished" and best is not None and math.isfinite(best):
                study.tell(trial, best)
            elif record.get("status") == "pruned":
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, state=TrialState.FAIL)
        except RuntimeError as error:
            if "Study.stop" not in str(error):
                raise
            log.info("the sampler has tried its whole search space; the study stops here")
            return True
        return False

    def report(self, study: Any, fixed: list[str], sweep_dir: Path) -> None:
        """The best trial's command line and optimization_results.yaml (as the official plugin
        writes it), and Optuna's own pictures of the study."""
        from optuna.trial import TrialState

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            log.info("no trial of the study finished, so there is no best one yet")
            return
        best = study.best_trial
        results = {"name": "optuna", "best_params": dict(best.params), "best_value": best.value}
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        print(
            f"Best of {len(study.trials)} trials: trial {best.number}, {study.direction.name.lower()}d to {best.value:.6g}"
        )
        print(f"  train it again with: {self.rerun_command(fixed, best.params)}")
        from optuna.exceptions import ExperimentalWarning
        from optuna.visualization import matplotlib as plots

        try:
            with warnings.catch_warnings():
                # Optuna's matplotlib plots are marked experimental
                warnings.simplefilter("ignore", ExperimentalWarning)
                plots.plot_optimization_history(study).figure.savefig(
                    sweep_dir / "optuna_history.png", bbox_inches="tight"
                )
                if len(complete) > 1 and best.params:
                    plots.plot_param_importances(study).figure.savefig(
                        sweep_dir / "optuna_importances.png", bbox_inches="tight"
                    )
        except (
            ValueError,
            RuntimeError,
        ) as error:  # too few distinct trials for an importance estimate
            log.info("Optuna's pictures were not drawn: %s", error)
        print(f"Optuna's pictures: {sweep_dir}/optuna_history.png, optuna_importances.png")
