"""hydra/sweeper=compare (the sweep=compare preset): DeepOBS' protocol for comparing optimizers
fairly, in one command, with the tuning itself repeated (AlgoPerf's studies) and each optimizer
at its defaults (Crowded Valley's question).

Stage 1 runs the grid of every swept key (`optimizer` and `optimizer.lr` in the preset) `studies`
times, each study with its own `search_seeds` seeds per point: study s has the seeds
`seed + s * search_seeds`, ... Each study picks, for each optimizer, the grid point with the best
mean of the monitored best over its seeds (a point where a seed diverged or failed is never
taken). Stage 2 takes the point most studies picked (a tie goes to the better mean over the
picking studies) and runs it with `seeds` seeds: `seed`, `seed + 1`, ... Beside it, each
optimizer's baseline runs at its defaults (conf/optimizer/; the grid point that equals them where
there is one) with the same seeds. Stage-1 jobs among those seeds are not trained twice. The sweep's
summary then compares the stage-2 configurations (experiments.report.summary: comparison.md, the
table, every pair, the studies' picks, the tuning curve, the baselines and the time to a target).

A seed must change something for a spread to mean anything: where the model starts from fixed
values (`model.init_weight` and `model.init_bias` of the thermometer's tutorial 002), the comparison
starts each seed from the model's random initialisation instead, and says so
(`random_start: false` keeps the fixed start).

Both stages go to the launcher as batches, so hydra/launcher=vectorized (the preset's launcher)
trains each stage as one population where the jobs share their batches. The same command into the
same `hydra.sweep.dir` reuses every job that has a final result and chooses stage 2 again from
stage 1's files.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

from experiments.core.config import CONF_DIR, UserError, check_positive_int
from experiments.core.overrides import key_of
from experiments.core.state import read_record
from experiments.report.comparison import optimizer_of, plural, write_plan
from hydra_plugins.experiments_plugins.grid_sweeper import GridSweeper, composed, grid

log = logging.getLogger(__name__)


def stage_one_means(
    points: dict[tuple[str, ...], list[dict[str, Any] | None]],
) -> dict[tuple[str, ...], float | None]:
    """Each grid point's mean monitored best over its seeds; None where a seed did not finish."""
    means = {}
    for point, records in points.items():
        bests = [
            (r.get("monitor") or {}).get("best")
            for r in records
            if r is not None and r.get("status") == "finished"
        ]
        finite = [b for b in bests if b is not None and math.isfinite(b)]
        means[point] = math.fsum(finite) / len(finite) if len(finite) == len(records) else None
    return means


def monitor_mode(by_study: list[dict[tuple[str, ...], list[dict[str, Any] | None]]]) -> str:
    """Whether the monitored value is better lower ("min") or higher ("max"), as the jobs recorded it."""
    for records in by_study:
        for point_records in records.values():
            for record in point_records:
                if record is not None and record.get("monitor"):
                    return record["monitor"].get("mode", "min")
    return "min"


class CompareSweeper(GridSweeper):
    def __init__(
        self,
        params: dict[str, str] | None = None,
        search_seeds: int = 1,
        seeds: int = 10,
        studies: int = 3,
        baselines: bool = True,
        target: float | None = None,
        tolerance: float = 0.01,
        random_start: bool = True,
        max_batch_size: int | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.search_seeds, self.seeds, self.studies = search_seeds, seeds, studies
        self.baselines, self.target, self.tolerance = baselines, target, tolerance
        self.random_start = random_start
        self.without_defaults: set[str] = set()  # optimizers with no file in conf/optimizer/

    def check(self, parsed: list[Any]) -> None:
        self.check_max_batch_size()
        for key, meaning in (
            (
                "random_start",
                "start each seed from the model's random initialisation) or false (keep the configured start",
            ),
            (
                "baselines",
                "run each optimizer at its defaults beside its tuned point) or false (only the tuned points",
            ),
        ):
            if not isinstance(getattr(self, key), bool):
                raise UserError(
                    f"hydra.sweeper.{key} must be true ({meaning}), got {getattr(self, key)!r}."
                )
        for key in ("search_seeds", "seeds", "studies"):
            check_positive_int(f"hydra.sweeper.{key}", getattr(self, key))
        if self.search_seeds > self.seeds:
            raise UserError(
                f"hydra.sweeper.search_seeds={self.search_seeds} is more than hydra.sweeper.seeds={self.seeds}; stage 2 reruns stage 1's best point with at least as many seeds."
            )
        for override in parsed:
            if override.get_key_element().lstrip("+") == "seed" and override.is_sweep_override():
                raise UserError(
                    "sweep=compare chooses the seeds itself: give hydra.sweeper.seeds (stage 2, default 10) and hydra.sweeper.search_seeds (stage 1, default 1) instead of sweeping seed."
                )
        if not any(o.is_sweep_override() for o in parsed):
            raise UserError(
                "sweep=compare has no grid to search: sweep the optimizer and its learning rate, as optimizer=sgd,adam optimizer.lr=1e-3,1e-2,1e-1."
            )
        for override in parsed:
            key = key_of(override.input_line)
            tuned = key in ("optimizer", "scheduler") or key.startswith(
                ("optimizer.", "scheduler.")
            )
            if override.is_sweep_override() and not tuned:
                raise UserError(
                    f"sweep=compare compares optimizers and tunes their settings, but {key} is swept too, so each optimizer's best point could come from another {key}: "
                    f"give {key} one value, or run sweep=compare once per value."
                )

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        # the command line's values of a key replace the preset's
        given = {o.get_key_element(): o for o in parser.parse_overrides(list(arguments))}
        preset = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()])
        parsed = [o for o in preset if o.get_key_element() not in given] + list(given.values())
        self.check(parsed)
        # a fixed seed=N is the first seed, not a setting of every job
        seeds_given = [o for o in parsed if o.get_key_element().lstrip("+") == "seed"]
        parsed = [o for o in parsed if o not in seeds_given]
        points = grid(parsed)
        seed_value = composed(
            self.hydra_context,
            self.config,
            [*points[0], *(f"seed={o.get_value_element_as_str()}" for o in seeds_given)],
        ).seed
        if isinstance(seed_value, bool) or not isinstance(seed_value, int) or seed_value < 0:
            raise UserError(f"seed must be an integer from 0 to {2**32 - 1}, got {seed_value!r}.")
        first_seed = seed_value
        fixed = self.random_start_overrides(points[0], given)
        points = [[*point, *fixed] for point in points]
        # study s searches with its own seeds; study 0's are the seeds of a single search
        studies = [
            [f"seed={first_seed + s * self.search_seeds + k}" for k in range(self.search_seeds)]
            for s in range(self.studies)
        ]
        stage_one = [[*point, seed] for point in points for study in studies for seed in study]
        seeds = [f"seed={first_seed + k}" for k in range(self.seeds)]
        tuned = {key_of(o.input_line) for o in parsed if o.is_sweep_override()}
        defaults = self.baseline_points(points, tuned) if self.baselines else {}
        baseline_jobs = [[*point, seed] for point in defaults.values() for seed in seeds]
        # every name says the stage, the swept settings (optimizer, learning rate) and the seed
        shown = (*(key_of(o.input_line) for o in parsed if o.is_sweep_override()), "seed")
        named = dict(zip(map(tuple, stage_one), self.named(stage_one, "stage1", shown)))
        self.validate_batch_is_legal(list(named.values()))
        self.check_jobs([*named.values(), *(j for j in baseline_jobs if j not in stage_one)])
        names = [self.folder(named[tuple(job)]) for job in stage_one]
        if len(set(names)) < len(names):
            raise UserError(
                f"hydra.sweep.subdir={self.config.hydra.sweep.subdir} gives several jobs of sweep=compare one folder; "
                "leave it at its default (the folder named by the job's overrides) so each stage can find the other's jobs."
            )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        # an earlier run's plan would describe this one if it stopped before writing its own
        write_plan(sweep_dir, None)
        if fixed:
            log.info(
                f"sweep=compare starts each seed from the model's random initialisation ({' '.join(fixed)}): "
                "from a fixed start every seed would be the same run (hydra.sweeper.random_start=false keeps it)"
            )
        log.info(
            f"sweep=compare, stage 1: {plural(len(studies), 'study', 'studies')} of {len(points)} grid points x "
            f"{plural(self.search_seeds, 'seed')} = {len(stage_one)} jobs"
        )
        returns = self.launch_all(list(named.values()))
        # the name does not depend on the number
        by_study = [
            {
                tuple(point): [
                    read_record(self.job_dir(named[(*point, seed)], 0)) for seed in study
                ]
                for point in points
            }
            for study in studies
        ]
        study_means = [stage_one_means(records) for records in by_study]
        mode = monitor_mode(by_study)
        picks = [self.choose(points, means, mode) for means in study_means]
        chosen = self.agree(points, picks, study_means, mode)
        stage_two = [[*point, seed] for point in chosen.values() for seed in seeds]
        later = list(dict.fromkeys(tuple(j) for j in [*stage_two, *baseline_jobs]))
        new = [list(job) for job in later if list(job) not in stage_one]
        for stage, jobs in (
            ("stage2", [j for j in new if j in stage_two]),
            ("baseline", [j for j in new if j not in stage_two]),
        ):
            named.update(zip(map(tuple, jobs), self.named(jobs, stage, shown)))
        log.info(
            f"sweep=compare, stage 2: the best point of {len(chosen)} optimizer(s) x {plural(len(seeds), 'seed')} = "
            f"{len(stage_two)} jobs"
            + (f", and {len(defaults)} optimizer(s) at their defaults" if defaults else "")
            + f": {len(new)} new, the others from stage 1"
        )
        returns += self.launch_all([named[tuple(job)] for job in new], first_num=len(stage_one))
        pooled = stage_one_means(
            {
                tuple(point): [r for records in by_study for r in records[tuple(point)]]
                for point in points
            }
        )
        write_plan(
            sweep_dir,
            {
                "stage1": [
                    {
                        "overrides": list(point),
                        "mean": pooled[tuple(point)],
                        "study_means": [means[tuple(point)] for means in study_means],
                    }
                    for point in points
                ],
                "stage1_jobs": names,
                "studies": [[int(s.split("=")[1]) for s in study] for study in studies],
                "picks": {
                    name: [list(pick[name]) if name in pick else None for pick in picks]
                    for name in dict.fromkeys(optimizer_of(p) for p in points)
                },
                "chosen": {name: list(point) for name, point in chosen.items()},
                "stage2": [self.folder(named[tuple(job)]) for job in stage_two],
                "baselines": {
                    name: {
                        "overrides": list(point),
                        "jobs": [self.folder(named[(*point, seed)]) for seed in seeds],
                    }
                    for name, point in defaults.items()
                },
                "seeds": [int(s.split("=")[1]) for s in seeds],
                "target": self.target,
                "tolerance": self.tolerance,
            },
        )
        return returns

    def baseline_points(self, points: list[list[str]], tuned: set[str]) -> dict[str, list[str]]:
        """Each optimizer at its defaults for the tuned `optimizer.*` keys, as its file in
        conf/optimizer/ sets them (`optimizer.lr=0.001` for adam, whatever the experiment sets),
        and at the configured value of any other tuned key: the grid point with those values where
        there is one, so that its stage-1 jobs count, else a point of its own."""
        found: dict[str, list[str]] = {}
        for point in points:
            name = optimizer_of(point)
            if name in found or name in self.without_defaults:
                continue
            bare = [o for o in point if key_of(o) not in tuned or key_of(o) == "optimizer"]
            # the optimizer's option: swept, or as the config chooses it
            option = name or composed(
                self.hydra_context, self.config, bare, mutable=False
            ).hydra.runtime.choices.get("optimizer")
            source = CONF_DIR / "optimizer" / f"{option}.yaml"
            if not source.is_file():  # an option from another config path: no defaults of ours
                log.warning(
                    f"sweep=compare: no conf/optimizer/{option}.yaml of this package, so {option} runs without its defaults beside it"
                )
                self.without_defaults.add(name)
                continue
            defaults = OmegaConf.load(source)
            own = [
                f"{key}={OmegaConf.select(defaults, key.removeprefix('optimizer.'))}"
                for key in sorted(tuned)
                if key.startswith("optimizer.")
                and OmegaConf.select(defaults, key.removeprefix("optimizer."), default=None)
                is not None
            ]
            default = self.tuned_values([*bare, *own], tuned)
            same = [
                p
                for p in points
                if optimizer_of(p) == name and self.tuned_values(p, tuned) == default
            ]
            found[name] = same[0] if same else [*bare, *own]
        return found

    def tuned_values(self, point: list[str], tuned: set[str]) -> dict[str, Any]:
        """The job's values of the tuned keys, as composed: a config group's chosen option, or the
        value (1e-3 and 0.001 alike)."""
        config = composed(self.hydra_context, self.config, point, mutable=False)
        choices = config.hydra.runtime.choices
        return {
            key: choices.get(key) if key in choices else OmegaConf.select(config, key)
            for key in sorted(tuned)
        }

    def agree(
        self,
        points: list[list[str]],
        picks: list[dict[str, list[str]]],
        study_means: list[dict[tuple[str, ...], float | None]],
        mode: str,
    ) -> dict[str, list[str]]:
        """Each optimizer's point as the studies chose it: the one most of them picked, a tie to the
        better mean over the studies that picked it."""
        names = list(dict.fromkeys(optimizer_of(p) for p in points))
        chosen = {}
        for name in names:
            votes = Counter(tuple(pick[name]) for pick in picks if name in pick)
            if not votes:
                continue

            def score(point: tuple[str, ...]) -> tuple[int, float]:
                means = [
                    m[point]
                    for m, pick in zip(study_means, picks)
                    if tuple(pick.get(name, ())) == point
                ]
                mean = math.fsum(means) / len(means)
                return -votes[point], mean if mode == "min" else -mean

            chosen[name] = list(min(votes, key=score))
        if left := [n or "(the configured optimizer)" for n in names if n not in chosen]:
            log.warning(
                f"sweep=compare: no grid point of {', '.join(left)} finished every seed in any study, so stage 2 leaves it out"
            )
        return chosen

    def folder(self, job: list[str]) -> str:
        """A job's folder, relative to the sweep's (the names its plan and tables use)."""
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        return self.job_dir(job, 0).relative_to(sweep_dir).as_posix()

    def random_start_overrides(self, point: list[str], given: dict[str, Any]) -> list[str]:
        """`model.init_*=null` for each initial value the model fixes, unless the command line fixed it."""
        if not self.random_start:
            return []
        model = composed(self.hydra_context, self.config, point).get("model") or {}
        return [
            f"model.{key}=null"
            for key, value in model.items()
            if str(key).startswith("init_") and value is not None and f"model.{key}" not in given
        ]

    def choose(
        self,
        points: list[list[str]],
        means: dict[tuple[str, ...], float | None],
        mode: str,
    ) -> dict[str, list[str]]:
        """Each optimizer's grid point with the best mean of one study."""
        chosen: dict[str, tuple[float, list[str]]] = {}
        for point in points:
            mean = means[tuple(point)]
            name = optimizer_of(point)
            if mean is None:
                continue
            score = mean if mode == "min" else -mean
            if name not in chosen or score < chosen[name][0]:
                chosen[name] = (score, point)
        return {name: point for name, (_, point) in chosen.items()}
