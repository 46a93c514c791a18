"""Every numeric key of conf/ has a domain (experiments.core.domains), and every value just outside
it (past a bound, NaN, infinity, a string, a bool where a number is meant) is one sentence naming
the key, the value and what would be valid: a key added to conf/ without a domain fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from conftest import cli, compose_train
from experiments.core.config import CONF_DIR, UserError, check_values
from experiments.core.domains import BY_TORCH, DOMAINS, ELSEWHERE, check, check_config

# Not a user's setting: the version of Hydra's logging schema.
NOT_SETTINGS = {"hydra.job_logging.version", "hydra.hydra_logging.version"}
ENTRY_POINTS = {"landscape.yaml": "landscape."}  # their keys at the top level, named so here


def conf_keys() -> dict[str, tuple[str, str, bool]]:
    """Every key set to a number, a list of numbers or null somewhere in conf/, as the composed
    config names it: a file and an override that composes it, and whether any file gives it a
    number."""
    found: dict[str, tuple[str, str, bool]] = {}

    def walk(node: dict, prefix: str, where: tuple[str, str]) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, f"{name}.", where)
                continue
            numeric = not isinstance(value, (bool, str)) and (
                isinstance(value, (int, float))
                or (
                    isinstance(value, list)
                    and bool(value)
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                )
            )
            if numeric or value is None:
                earlier = found.get(name)
                if earlier is None or (numeric and not earlier[2]):
                    found[name] = (*where, numeric or bool(earlier and earlier[2]))

    for path in sorted(CONF_DIR.rglob("*.yaml")):
        text = path.read_text()
        node = yaml.safe_load(text) or {}
        if not isinstance(node, dict):
            continue
        node.pop("defaults", None)
        relative = path.relative_to(CONF_DIR)
        parts = relative.with_suffix("").parts
        if "@package _global_" in text or len(parts) == 1:
            prefix = ENTRY_POINTS.get(relative.name, "")
            override = f"{parts[0]}={parts[1]}" if len(parts) == 2 else ""
        else:
            prefix = ".".join(parts[:-1]) + "."
            override = f"{'/'.join(parts[:-1])}={parts[-1]}"
        walk(node, prefix, (str(relative), override))
    return {k: v for k, v in found.items() if k not in NOT_SETTINGS}


KEYS = conf_keys()
NUMERIC = {k for k, (_, _, numeric) in KEYS.items() if numeric}


def test_every_numeric_key_of_conf_has_a_domain_and_every_domain_a_key():
    missing = sorted(k for k in NUMERIC if k not in DOMAINS)
    assert not missing, f"keys of conf/ with a number and no domain: {missing}"
    assert sorted(k for k in DOMAINS if k not in KEYS) == []
    assert len(DOMAINS) >= 75


CASES = [(key, value) for key in sorted(DOMAINS) for value in DOMAINS[key].outside()]


def test_the_walk_covers_every_key_with_values_past_each_bound_and_of_the_wrong_kind():
    assert len({k for k, _ in CASES}) == len(DOMAINS) and len(CASES) >= 6 * len(DOMAINS) - 40
    for key in DOMAINS:
        shown = [repr(v) for k, v in CASES if k == key]
        assert "'abc'" in shown or "['abc']" in shown or "[]" in shown, key
        assert any(v in shown for v in ("nan", "[nan]", "[nan, nan]")), key


@pytest.mark.parametrize(("key", "value"), CASES, ids=[f"{k}={v!r}" for k, v in CASES])
def test_a_value_outside_its_domain_is_one_sentence_naming_key_value_and_what_is_valid(key, value):
    with pytest.raises(UserError) as refused:
        check(key, value)
    sentence = str(refused.value)
    # true, false and null as the command line and YAML spell them; anything else as Python's repr
    spelled = {True: "true", False: "false"}.get(value) if isinstance(value, bool) else repr(value)
    spelled = "null" if value is None else spelled
    assert sentence.startswith(f"{key} must be ") and sentence.endswith(f", got {spelled}.")
    assert "\n" not in sentence and sentence.count(". ") == 0


def job_config(key: str, tmp_path: Path):
    """A composed training config holding `key`, from the conf/ file that sets it."""
    _, override, _ = KEYS[key]
    return compose_train([override] if override else [], tmp_path / "run")


JOB_KEYS = sorted(k for k in DOMAINS if not k.startswith(ELSEWHERE) and k not in BY_TORCH)


def test_check_values_refuses_every_job_keys_outside_value(tmp_path: Path):
    """The checks a run, every job of a sweep and every trial make before anything is built."""
    checked, configs = 0, {}
    for key in JOB_KEYS:
        override = KEYS[key][1]
        if override not in configs:  # one composition per conf/ file's option
            configs[override] = job_config(key, tmp_path)
        cfg = configs[override]
        assert OmegaConf.select(cfg, key, default="absent") != "absent", key
        for value in DOMAINS[key].outside():
            bad = cfg.copy()
            OmegaConf.update(bad, key, value, force_add=True)
            with pytest.raises(UserError) as refused:
                check_values(bad)
            assert f"{key} must be " in str(refused.value) and "\n" not in str(refused.value), (
                key,
                value,
            )
            checked += 1
    assert checked >= 5 * len(JOB_KEYS)


def test_betas_outside_their_domain_are_refused_by_torchs_own_check_in_one_sentence(tmp_path: Path):
    done = cli(["optimizer=adam", "optimizer.betas=[1.5,0.9]"], tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "optimizer settings rejected by torch.optim.Adam" in done.stderr
    assert not (tmp_path / "outputs").exists()


def test_the_sweepers_and_launchers_numbers_are_checked(tmp_path: Path):
    options = {
        "hydra.sweeper.": ["hydra/sweeper=compare", "hydra/sweeper=optuna"],
        "hydra.launcher.": [
            "hydra/launcher=parallel",
            "hydra/launcher=slurm",
            "hydra/launcher=submitit_local",
        ],
    }
    checked = set()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for prefix, chosen in options.items():
            for option in chosen:
                config = compose("train", [option], return_hydra_config=True)
                for key in [k for k in DOMAINS if k.startswith(prefix)]:
                    if OmegaConf.select(config, key, default="absent") == "absent":
                        continue
                    for value in DOMAINS[key].outside():
                        bad = config.copy()
                        try:
                            OmegaConf.update(bad, key, value, force_add=True)
                        except ValidationError:  # a plugin's typed config refuses it itself
                            continue
                        with pytest.raises(UserError, match=f"^{key} must be "):
                            check_config(bad, only=prefix)
                    checked.add(key)
    assert checked == {k for k in DOMAINS if k.startswith(("hydra.sweeper.", "hydra.launcher."))}


def test_a_value_outside_its_domain_refuses_a_run_and_a_sweep_in_one_sentence_leaving_nothing(
    tmp_path: Path,
):
    done = cli(["scheduler=step", "scheduler.gamma=2"], tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == ("error: scheduler.gamma must be a number in (0, 1], got 2."), (
        done.stderr
    )
    done = cli(
        ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=0", "seed=0,1"],
        tmp_path,
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "hydra.launcher.timeout_min must be a positive integer, got 0." in done.stderr
    done = cli(["-m", "sweep=compare", "hydra.sweeper.seeds=-2"], tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "hydra.sweeper.seeds must be a positive integer, got -2." in done.stderr
    # one job's value outside its domain refuses the whole sweep, whichever launcher runs it
    for launcher in ("basic", "vectorized"):
        done = cli(
            [
                "sweep=compare",
                f"hydra/launcher={launcher}",
                "optimizer=sgd,adam",
                "optimizer.lr=0.01,-1",
            ],
            tmp_path,
        )
        assert done.returncode == 1
        assert done.stderr == "error: optimizer.lr must be a positive number, got -1.\n"
    assert not (tmp_path / "outputs").exists()


def test_the_other_entry_points_check_their_numbers(tmp_path: Path):
    from experiments.landscape import landscape

    with pytest.raises(UserError, match=r"^samples must be a positive integer, got 0\.$"):
        landscape(str(tmp_path), samples=0)
    with pytest.raises(
        UserError, match=r"^seed must be an integer in \[0, 4294967295\], got -1\.$"
    ):
        landscape(str(tmp_path), seed=-1)
    done = cli(["lr_find.early_stop_threshold=0.5"], tmp_path, module="experiments.lr_find")
    assert (
        done.returncode == 1
        and "lr_find.early_stop_threshold must be a number above 1" in done.stderr
    )
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.png"))


def test_help_lists_every_training_keys_domain_from_the_table(tmp_path: Path):
    done = cli(["--help"], tmp_path)
    assert done.returncode == 0
    listed = done.stdout.split("== The values every number may take", 1)[1]
    for key in DOMAINS:
        if not key.startswith(ELSEWHERE):
            (line,) = [row for row in listed.splitlines() if row.split() and row.split()[0] == key]
            assert line.strip().endswith(DOMAINS[key].describe()), key
    assert "scheduler.gamma" in listed and "a number in (0, 1]" in listed


@pytest.mark.parametrize(
    ("swept", "sentence"),
    [
        (
            ["optimizer.lr=interval(0,1)"],
            "error: optimizer.lr=interval(0,1) can draw 0.0: optimizer.lr must be a positive number, got 0.0.",
        ),
        (
            ["optimizer=momentum", "optimizer.momentum=choice(0.5,1.5)"],
            "error: optimizer.momentum=choice(0.5,1.5) can draw 1.5: optimizer.momentum must be a number in [0, 1), got 1.5.",
        ),
    ],
)
def test_an_optuna_search_that_could_draw_outside_a_domain_is_refused_before_it_starts(
    swept: list[str], sentence: str, tmp_path: Path
):
    done = cli(["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", *swept], tmp_path)
    assert done.returncode == 1 and done.stderr == sentence + "\n"
    assert not (tmp_path / "outputs").exists()
