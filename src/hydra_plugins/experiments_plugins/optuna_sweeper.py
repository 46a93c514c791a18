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
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
SWEEP_ONLY = ("sweep", "fail_fast", "trial")  # keys that mean nothing to the best trial run alone


def distribution(override: Any) -> Any:
    """The Optuna distribution for one of Hydra's sweep overrides, as the official plugin maps them."""
    from hydra.core.override_parser.types import Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from experiments.config import UserError

    value = override.value()
    if override.is_choice_sweep():
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        if not choices:
            raise UserError(f"{override.input_line} offers no value to choose from; list them, as choice(a, b).")
        return CategoricalDistribution(choices)
    try:
        if override.is_range_sweep():
            if value.shuffle:
                return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
            if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
                return FloatDistribution(value.start, value.stop, step=value.step)
            return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
        if override.is_interval_sweep():
            integers = isinstance(value.start, int) and isinstance(value.end, int)
            log_scale = "log" in value.tags
            if integers:
                return IntDistribution(int(value.start), int(value.end), log=log_scale)
            return FloatDistribution(value.start, value.end, log=log_scale)
    except ValueError as error:  # Optuna's own check of the range
        raise UserError(f"{override.input_line} is not a range Optuna can draw from ({str(error).rstrip('.')}); give the low end first, both above 0 on a log scale.") from None
    raise UserError(f"{override.get_key_element()} is swept as {override.get_value_element_as_str()}, but hydra/sweeper=optuna takes interval(a, b), tag(log, interval(a, b)), int(interval(a, b)), choice(...) or range(a, b, step).")


EXAMPLES = {"sampler": "{_target_:optuna.samplers.TPESampler,seed:0}", "pruner": "{_target_:optuna.pruners.MedianPruner,n_startup_trials:5}"}


def built(name: str, setting: Any) -> Any:
    """hydra.sweeper.sampler or .pruner as an object (Hydra hands the plugin its `_target_` settings
    already instantiated; a config written elsewhere may not be)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from experiments.config import UserError

    if OmegaConf.is_dict(setting) or (isinstance(setting, dict) and "_target_" in setting):
        try:
            return instantiate(setting)
        except InstantiationException as error:
            reason = str(error).split(", set env var HYDRA_FULL_ERROR")[0].splitlines()[0]
            raise UserError(f"hydra.sweeper.{name} could not be built ({reason}); give an Optuna {name} such as {EXAMPLES[name]}.") from error
    return setting or None


def literal(value: Any) -> str:
    """A sampled value as a command-line override writes it."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def check_settings(config: DictConfig) -> None:
    """The sweeper's settings and search space, checked before the sweep directory is made: the
    sampler and pruner build, one direction, a distribution for every range. (A glob() over a
    config group needs Hydra's config loader, so it is checked when the sweep starts.)"""
    from hydra.errors import HydraException, InstantiationException
    from hydra.utils import instantiate

    from experiments.cli import instantiation_error
    from experiments.config import UserError

    for key in ("n_trials", "n_jobs"):
        value = config.hydra.sweeper.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"hydra.sweeper.{key} must be a positive integer, got {value!r}.")
    try:
        sweeper = instantiate(config.hydra.sweeper)
    except InstantiationException as error:
        raise UserError(instantiation_error(error, list(config.hydra.overrides.task))) from None
    sweeper.config = config
    sweeper.direction()
    parser = OverridesParser.create()
    overrides = [*(f"{k}={v}" for k, v in sweeper.params.items()), *config.hydra.overrides.task]
    for override in parser.parse_overrides(overrides):
        if override.is_sweep_override():
            try:
                distribution(override)
            except HydraException:  # glob(): the options of a config group
                pass


class OptunaSweeper(Sweeper):
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
        search_space: Any = None,
    ) -> None:
        self.settings = {"sampler": sampler, "direction": direction, "storage": storage, "study_name": study_name, "pruner": pruner}
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.params = dict(params or {})
        self.custom_search_space = custom_search_space
        if search_space:
            from experiments.config import UserError

            raise UserError("hydra.sweeper.search_space is the official plugin's old form; write the same ranges under hydra.sweeper.params.")

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function, config=config)

    def direction(self) -> str:
        """Minimize or maximize: as configured, else the monitored metric's own direction."""
        direction = self.settings["direction"]
        if OmegaConf.is_list(direction) or isinstance(direction, (list, tuple)):
            if len(direction) != 1:
                from experiments.config import UserError

                raise UserError(f"hydra.sweeper.direction has {len(direction)} values, but hydra/sweeper=optuna optimises one objective, the monitored metric: give minimize or maximize.")
            direction = direction[0]
        if direction:
            return str(direction).rsplit(".", 1)[-1]
        mode = self.config.get("monitor_mode", "auto")
        if mode in ("min", "max"):
            return {"min": "minimize", "max": "maximize"}[mode]
        from hydra.utils import get_class

        model = self.config.model
        directions = get_class(model._target_)(**{k: v for k, v in model.items() if not str(k).startswith("_")}).metric_directions()
        return "maximize" if directions[self.config.monitor] else "minimize"

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from hydra.utils import get_method

        from experiments.cli import quote_value
        from experiments.config import UserError, job_dir_name
        from experiments.rundir import discard
        from experiments.search import DEFAULT_STUDY, study_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        try:
            space = {o.get_key_element(): distribution(o) for o in parsed if o.is_sweep_override()}
        except UserError:
            discard(Path(str(self.config.hydra.sweep.dir)))  # the empty directory made for this sweep
            raise
        fixed = [f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in parsed if not o.is_sweep_override()]
        settings = self.settings
        # Every setting is checked before the sweep directory is touched: a mistake leaves nothing.
        direction, sampler, pruner = self.direction(), built("sampler", settings["sampler"]), built("pruner", settings["pruner"])
        extend = get_method(self.custom_search_space) if self.custom_search_space else None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        storage = None
        if settings["storage"]:  # a database of the user's: opened before anything is written
            try:
                storage = study_storage(settings["storage"], sweep_dir)
            except Exception as error:  # SQLAlchemy's and Optuna's errors, whatever the database
                discard(sweep_dir)
                first = (str(error).splitlines() or [type(error).__name__])[0]
                raise UserError(f"hydra.sweeper.storage={settings['storage']} cannot be opened ({first}); give a database URL Optuna can open, such as sqlite:///study.db, or leave it null to keep the study in the sweep directory.") from None
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = optuna.create_study(
            study_name=settings["study_name"] or DEFAULT_STUDY,
            storage=storage or study_storage(None, sweep_dir),
            sampler=sampler,
            pruner=pruner,
            direction=direction,
            load_if_exists=True,
        )
        for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(stale.number, state=optuna.trial.TrialState.FAIL)  # a run of this sweep killed earlier
        left = self.n_trials
        while left > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, left))]
            batch = []
            for trial in trials:
                if extend is not None:
                    extend(self.config, trial)
                sampled = [f"{key}={literal(value)}" for key, value in trial.params.items()]
                name = job_dir_name(f"trial{trial.number:03d}," + ",".join(sampled), trial.number)
                batch.append([*fixed, *sampled, f"trial={trial.number}", f"hydra.sweep.subdir={quote_value(name)}"])
            self.validate_batch_is_legal(batch)
            self.launcher.launch(batch, initial_job_idx=trials[0].number)
            exhausted = False
            for trial, overrides in zip(trials, batch):
                exhausted |= self.tell(study, trial, sweep_dir / overrides[-1].partition("=")[2].strip("'"))
            left = 0 if exhausted else left - len(trials)
        self.report(study, fixed, sweep_dir)

    @staticmethod
    def tell(study: Any, trial: Any, job_dir: Path) -> bool:
        """What the job's metrics.json says of it, told to Optuna. True when the sampler has now
        tried its whole space (GridSampler, BruteForceSampler): they stop the study, which outside
        Study.optimize Optuna raises as a RuntimeError after recording the trial."""
        from optuna.trial import TrialState

        try:
            record = json.loads((job_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            record = {"status": "failed"}
        best = (record.get("monitor") or {}).get("best")
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

    @staticmethod
    def report(study: Any, fixed: list[str], sweep_dir: Path) -> None:
        """The best trial's command line, and Optuna's own pictures of the study."""
        from optuna.trial import TrialState

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            log.info("no trial of the study finished, so there is no best one yet")
            return
        best = study.best_trial
        alone = [o for o in fixed if o.split("=", 1)[0].lstrip("+~") not in SWEEP_ONLY]  # sweep=optuna_lr would search again
        command = " ".join(["python -m experiments.train", *alone, *(f"{k}={literal(v)}" for k, v in best.params.items())])
        print(f"Best of {len(study.trials)} trials: trial {best.number}, {study.direction.name.lower()}d to {best.value:.6g}")
        print(f"  train it again with: {command}")
        from optuna.exceptions import ExperimentalWarning
        from optuna.visualization import matplotlib as plots

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)  # Optuna's matplotlib plots are marked experimental
                plots.plot_optimization_history(study).figure.savefig(sweep_dir / "optuna_history.png", bbox_inches="tight")
                if len(complete) > 1 and best.params:
                    plots.plot_param_importances(study).figure.savefig(sweep_dir / "optuna_importances.png", bbox_inches="tight")
        except (ValueError, RuntimeError) as error:  # too few distinct trials for an importance estimate
            log.info("Optuna's pictures were not drawn: %s", error)
        print(f"Optuna's pictures: {sweep_dir}/optuna_history.png, optuna_importances.png")
