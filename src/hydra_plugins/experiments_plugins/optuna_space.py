"""hydra/sweeper=optuna's search space and settings: the official plugin's range syntax as
Optuna distributions (`distribution`), a sampled value as an override (`literal`), and
`check_settings`, every setting checked before the sweep directory is made."""

from __future__ import annotations

import importlib.util
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

EXAMPLES = {
    "sampler": "{_target_:optuna.samplers.TPESampler,seed:0}",
    "pruner": "{_target_:optuna.pruners.MedianPruner,n_startup_trials:5}",
}


def distribution(override: Any) -> Any:
    """The Optuna distribution for one of Hydra's sweep overrides, as the official plugin maps them."""
    from hydra.core.override_parser.types import Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from experiments.core.config import UserError

    value = override.value()
    if override.is_choice_sweep():
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        if not choices:
            raise UserError(
                f"{override.input_line} offers no value to choose from; list them, as choice(a, b)."
            )
        return CategoricalDistribution(choices)
    try:
        if override.is_range_sweep():
            if value.shuffle:
                return CategoricalDistribution(
                    list(override.sweep_iterator(transformer=Transformer.encode))
                )
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
        raise UserError(
            f"{override.input_line} is not a range Optuna can draw from ({str(error).rstrip('.')}); give the low end first, both above 0 on a log scale."
        ) from None
    raise UserError(
        f"{override.get_key_element()} is swept as {override.get_value_element_as_str()}, but hydra/sweeper=optuna takes interval(a, b), tag(log, interval(a, b)), int(interval(a, b)), choice(...) or range(a, b, step)."
    )


def check_in_domain(override: Any) -> None:
    """Every value a search may draw for a key lies in its domain (experiments.core.domains): the
    ends of a range, every choice. One the search could draw outside refuses the sweep."""
    from experiments.core.config import UserError
    from experiments.core.domains import DOMAINS, check
    from experiments.core.overrides import key_of

    key = key_of(override.get_key_element())
    if key not in DOMAINS:
        return
    value = override.value()
    if override.is_interval_sweep():
        drawn = [value.start, value.end]
    elif override.is_range_sweep():
        drawn = list(override.sweep_iterator())[:1] + list(override.sweep_iterator())[-1:]
    else:
        drawn = list(override.sweep_iterator())
    for each in drawn:
        try:
            check(key, each)
        except UserError as error:
            raise UserError(f"{override.input_line} can draw {each!r}: {error}") from None


def built(name: str, setting: Any) -> Any:
    """hydra.sweeper.sampler or .pruner as an object (Hydra hands the plugin its `_target_` settings
    already instantiated; a config written elsewhere may not be)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from experiments.core.config import UserError

    if OmegaConf.is_dict(setting) or (isinstance(setting, dict) and "_target_" in setting):
        try:
            return instantiate(setting)
        except InstantiationException as error:
            reason = str(error).split(", set env var HYDRA_FULL_ERROR")[0].splitlines()[0]
            raise UserError(
                f"hydra.sweeper.{name} could not be built ({reason}); give an Optuna {name} such as {EXAMPLES[name]}."
            ) from error
    return setting or None


def first_value(distribution: Any) -> Any:
    """A value the search may draw: the first choice, or the low end of a range."""
    return distribution.choices[0] if hasattr(distribution, "choices") else distribution.low


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

    from experiments.core.config import UserError, check_positive_int
    from experiments.core.overrides import instantiation_error

    for key in ("n_trials", "n_jobs"):
        check_positive_int(f"hydra.sweeper.{key}", config.hydra.sweeper.get(key))
    sweeper_config = config.hydra.sweeper
    if sweeper_config.get("search_space"):
        raise UserError(
            "hydra.sweeper.search_space is the official plugin's old form; write the same ranges under hydra.sweeper.params, as interval(a, b) or choice(...)."
        )
    direction = sweeper_config.get("direction")
    for value in direction if OmegaConf.is_list(direction) else [direction]:
        if value is not None and str(value).rsplit(".", 1)[-1] not in ("minimize", "maximize"):
            raise UserError(
                f"hydra.sweeper.direction must be minimize, maximize or null (the objective metric's own direction), got {value!r}."
            )
    if custom := sweeper_config.get("custom_search_space"):
        from hydra.utils import get_method

        try:
            get_method(str(custom))
        except Exception as error:
            raise UserError(
                f"hydra.sweeper.custom_search_space={custom} cannot be imported ({str(error).splitlines()[0]}); give a function (cfg, trial) whose module is on PYTHONPATH."
            ) from None
    rate = config.hydra.sweeper.get("max_failure_rate")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1
    ):
        raise UserError(
            f"hydra.sweeper.max_failure_rate must be a number from 0 to 1 (the share of a batch's trials that may fail), or null to go on whatever fails, got {rate!r}."
        )
    sampler = str((config.hydra.sweeper.get("sampler") or {}).get("_target_", ""))
    if sampler.endswith("CmaEsSampler") and importlib.util.find_spec("cmaes") is None:
        raise UserError(
            "hydra/sweeper/sampler=cmaes needs the cmaes package, which is not installed; pip install cmaes, or pick tpe, random or nsgaii."
        )
    try:
        search = instantiate(config.hydra.sweeper).search
    except InstantiationException as error:
        raise UserError(instantiation_error(error, list(config.hydra.overrides.task))) from None
    search.config = config
    search.direction()
    parser = OverridesParser.create()
    overrides = [*(f"{k}={v}" for k, v in search.params.items()), *config.hydra.overrides.task]
    for override in parser.parse_overrides(overrides):
        if override.is_sweep_override():
            try:
                distribution(override)
            except HydraException:  # glob(): the options of a config group
                continue
            check_in_domain(override)
