"""Config: every experiment composes and builds, every optimizer instantiates, bad input fails clearly."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig

from conftest import compose_train
from experiments.build import build
from experiments.core.config import CONF_DIR, UserError, check_values

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
OPTIMIZERS = sorted(p.stem for p in (CONF_DIR / "optimizer").glob("*.yaml"))


def test_the_groups_users_are_promised_exist():
    assert set(OPTIMIZERS) >= {"sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"}
    assert set(EXPERIMENTS) >= {
        "linear_synthetic",
        "linear_2x1",
        "thermometer",
        "thermometer_adam",
        "mnist",
        "fashion_mnist",
    }


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment: str, tmp_path: Path, mnist_root: Path):
    data_root = [f"data.root={mnist_root}", "data.val_size=40"] if "mnist" in experiment else []
    datamodule, model = build(compose_train([f"experiment={experiment}", *data_root], tmp_path))
    assert model.task == datamodule.task
    datamodule.setup()
    x, _ = datamodule.splits["train"]
    assert model(x[:2]).shape[0] == 2


@pytest.mark.parametrize(
    "overrides, sweeper",
    [
        # this app's default for every -m (conf/hydra_plugins/experiments_plugins.yaml)
        ([], "hydra_plugins.experiments_plugins.grid_sweeper.GridSweeper"),
        # Hydra's own, asked for by name: ours is registered under a name of its own
        (["hydra/sweeper=basic"], "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"),
        (
            ["hydra/sweeper=optuna"],
            "hydra_plugins.experiments_plugins.optuna_sweeper.OptunaSweeper",
        ),
        # a preset's override /hydra/sweeper wins over the app's default
        (["sweep=optuna_lr"], "hydra_plugins.experiments_plugins.optuna_sweeper.OptunaSweeper"),
        (["sweep=compare"], "hydra_plugins.experiments_plugins.compare_sweeper.CompareSweeper"),
    ],
)
def test_the_sweeper_composes_without_hydras_schema_warning(
    overrides: list[str], sweeper: str, tmp_path: Path
):
    import warnings

    with warnings.catch_warnings():
        # Hydra warns when a config file shadows one of its own schemas
        warnings.simplefilter("error")
        cfg = compose_train(overrides, tmp_path)
    assert cfg.hydra.sweeper._target_ == sweeper


def test_default_experiment_is_linear_regression_on_synthetic_data(tmp_path: Path):
    cfg = compose_train([], tmp_path)
    assert cfg.data._target_.endswith("SyntheticLineDataModule")
    assert cfg.model._target_.endswith("LinearRegression")
    assert cfg.hydra.job.chdir is False


def test_another_hydra_app_in_the_environment_keeps_hydras_own_basic_sweeper(tmp_path: Path):
    """Installing this package changes nothing for a foreign Hydra app: Hydra still scans our
    plugins in its process, yet its -m runs Hydra's own BasicSweeper and none of our OmegaConf
    resolvers is registered there."""
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent("""\
        import hydra, omegaconf
        hydra.main(version_base="1.3", config_path=None)(lambda cfg: print("job", cfg.x, omegaconf.OmegaConf.has_resolver("job_dir")))()
        """)
    )
    shown = subprocess.run(
        [sys.executable, str(app), "--cfg", "hydra", "--package", "hydra.sweeper"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert "_target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper" in shown.stdout
    swept = subprocess.run(
        [sys.executable, str(app), "-m", "+x=1,2"], cwd=tmp_path, capture_output=True, text=True
    )
    assert swept.returncode == 0, swept.stderr[-2000:]
    # Hydra imported our plugin modules; our resolvers stay ours (registered by our entry points)
    assert "job 1 False" in swept.stdout and "job 2 False" in swept.stdout
    assert sorted(p.name for p in (tmp_path / "multirun").glob("*/*/*") if p.is_dir()) == ["0", "1"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_instantiates_with_overridden_settings(optimizer: str, tmp_path: Path):
    cfg = compose_train(
        [f"optimizer={optimizer}", "optimizer.lr=0.05", "optimizer.weight_decay=0.001"], tmp_path
    )
    factory = instantiate(cfg.optimizer, _convert_="all")
    opt = factory([torch.nn.Parameter(torch.zeros(2))])
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["weight_decay"] == 0.001


def test_momentum_preset_reproduces_seed_000s_update_with_dampening(tmp_path: Path):
    """v = 0.8 v + 0.2 g from the second step on, as the momentum file documents."""
    cfg = compose_train(
        [
            "optimizer=momentum",
            "optimizer.momentum=0.8",
            "optimizer.dampening=0.8",
            "optimizer.lr=1.0",
        ],
        tmp_path,
    )
    w = torch.nn.Parameter(torch.zeros(1))
    opt = instantiate(cfg.optimizer, _convert_="all")([w])
    grads = [1.0, 3.0]
    for g in grads:
        w.grad = torch.tensor([g])
        opt.step()
    v1 = grads[0]  # torch starts v at the first gradient
    v2 = 0.8 * v1 + 0.2 * grads[1]
    assert w.item() == pytest.approx(-(v1 + v2))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["optimizer=adamm"], "optimizer/adamm"),
        (["experiment=thermometr"], "experiment/thermometr"),
        (["optimizer.lrr=0.1"], "optimizer.lrr"),
    ],
)
def test_bad_group_names_and_keys_fail_at_composition(
    overrides: list[str], match: str, tmp_path: Path
):
    with pytest.raises(ConfigCompositionException, match=match):
        compose_train(overrides, tmp_path)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["optimizer.lr=-0.1"], r"optimizer.lr must be a positive number, got -0.1"),
        (["optimizer.lr=0"], r"optimizer.lr must be a positive number"),
        (["trainer.max_epochs=0"], r"trainer.max_epochs must be a positive integer"),
        (["data.batch_size=0"], r"data.batch_size must be a positive integer or null"),
        (["data.batch_size=-5"], r"data.batch_size"),
        (["data.val_fraction=1.2"], r"data.val_fraction must be a number strictly between 0 and 1"),
        (["experiment=thermometer", "data.val_fraction=0"], r"data.val_fraction"),
        (
            ["model=mlp", "data=thermometer"],
            r"model=mlp needs image classification data .* data=thermometer holds regression data",
        ),
        (["model=linear", "experiment=mnist"], r"model=linear needs regression data"),
        (
            ["optimizer=adam", "optimizer.betas=[1.5,0.9]"],
            r"optimizer settings rejected by torch.optim.Adam",
        ),
        (["+data.batchsize=3"], r"data: .*batchsize.* takes .*batch_size"),
    ],
)
def test_bad_values_fail_with_one_sentence_naming_the_key(
    overrides: list[str], match: str, tmp_path: Path
):
    cfg = compose_train(overrides, tmp_path)
    with pytest.raises(UserError, match=match) as error:
        check_values(cfg)
        build(cfg)
    assert "\n" not in str(error.value)


def sweep_jobs(experiment: str, sweep: str) -> tuple[DictConfig, list[list[str]]]:
    """The master config and every job of `-m experiment=... sweep=...`, as the grid sweeper expands them."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    from hydra_plugins.experiments_plugins.grid_sweeper import grid

    loader = GlobalHydra.instance().config_loader()
    arguments = [f"experiment={experiment}", f"sweep={sweep}"]
    master = loader.load_configuration("train", arguments, run_mode=RunMode.MULTIRUN)
    str(master.hydra.sweep.dir)  # as Hydra's run does before its sweeper: `now` is then one time
    params = {k: v for k, v in (master.hydra.sweeper.get("params") or {}).items()}
    if sweep == "optuna_lr":  # ranges: the trials' own values
        params = {"optimizer.lr": "0.000123,0.0456"}
    parser = OverridesParser.create(config_loader=loader)
    jobs = grid(parser.parse_overrides([*(f"{k}={v}" for k, v in params.items()), *arguments]))
    # what sweep=compare's second stage and a seed sweep add
    start = (
        ["model.init_weight=null", "model.init_bias=null"] if "init_weight" in master.model else []
    )
    # two of the first configuration's jobs (composed, then changed in a value only), the last
    # with a seed, and the second with a hydra key: Hydra's own composition of each, the
    # reference, takes about 0.3 s
    # a hydra key set per job goes to hydra.overrides.hydra, not into the job's folder name
    env = "hydra.job.chdir=false"
    return master, [
        *jobs[:2],
        [*jobs[-1], "seed=3", *start],
        [*jobs[1], env, "fail_fast=true"],
    ]


@pytest.mark.parametrize("sweep", sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
def test_each_jobs_config_equals_hydras_own_composition(sweep: str):
    """The sweepers compose each choice of config groups once and set a job's plain values on a
    copy (grid_sweeper.compose); a job of every preset, composed and then set by value, under
    every experiment, and the kinds of override a job adds (a seed, a start, a hydra key) under
    one, must be what Hydra's config loader composes, its override_dirname and directory
    included."""
    from types import SimpleNamespace

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    from hydra_plugins.experiments_plugins import grid_sweeper

    def directory(config: DictConfig, num: int) -> str:
        config = copy.deepcopy(config)
        with open_dict(config):
            config.hydra.job.num = num
        return f"{config.hydra.sweep.dir}/{config.hydra.sweep.subdir}"

    experiments = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="train"):
        loader = GlobalHydra.instance().config_loader()
        context = SimpleNamespace(config_loader=loader)
        fast_ones = 0
        for experiment in experiments:
            master, jobs = sweep_jobs(experiment, sweep)
            if experiment != "thermometer":  # the kinds of override a job adds: under one
                jobs = jobs[:2]
            grid_sweeper.forget_composed()
            for num, overrides in enumerate(jobs):
                before = len(grid_sweeper.TEMPLATES)
                ours = grid_sweeper.compose(context, master, overrides)
                fast_ones += len(grid_sweeper.TEMPLATES) == before
                hydras = loader.load_sweep_config(master, list(overrides))
                assert OmegaConf.to_container(ours) == OmegaConf.to_container(hydras), overrides
                assert ours.hydra.job.override_dirname == hydras.hydra.job.override_dirname
                assert directory(ours, num) == directory(hydras, num)
                assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(hydras)
        # the shortcut was taken: the second job differs from the first in a value only
        assert fast_ones >= len(experiments)
        # a key the config lacks fails in Hydra's words
        master, jobs = sweep_jobs("thermometer", sweep)
        grid_sweeper.forget_composed()
        grid_sweeper.compose(context, master, jobs[0])
        bad = [*jobs[0], "model.no_such_key=1"]
        with pytest.raises(ConfigCompositionException) as ours:
            grid_sweeper.compose(context, master, bad)
        with pytest.raises(ConfigCompositionException) as hydras:
            loader.load_sweep_config(master, bad)
        assert str(ours.value) == str(hydras.value)


@pytest.mark.parametrize("sweeper", ["grid", "optuna"])
def test_a_sweeps_launcher_takes_the_configs_its_sweeper_composed(
    sweeper: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Hydra's basic launcher composes each job again; here it takes the config the sweeper
    composed to check the job (grid_sweeper.ComposedOnce), and the sweeper composes each choice of
    config groups once: 2 optimizers x 2 learning rates are 2 of Hydra's compositions, not 4 + 4,
    and 4 Optuna trials 3 at most."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from conftest import cli, job_dirs, read_metrics

    calls = []
    original = ConfigLoaderImpl.load_sweep_config

    def counted(self, master_config, sweep_overrides):
        calls.append(list(sweep_overrides))
        return original(self, master_config, sweep_overrides)

    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counted)
    jobs = ["experiment=thermometer", "trainer.max_epochs=2"]
    if sweeper == "grid":
        jobs += ["optimizer=sgd,adam", "optimizer.lr=0.01,0.1"]
    else:
        jobs += [
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=4",
            "hydra.sweeper.n_jobs=4",
            "optimizer=choice(sgd,adam)",
            "optimizer.lr=interval(0.01,0.1)",
        ]
    done = cli(["-m", *jobs], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [read_metrics(d) for d in job_dirs(next((tmp_path / "outputs" / "sweeps").iterdir()))]
    assert len(records) == 4 and {r["status"] for r in records} == {"finished"}
    optimizers = {r["hparams"]["optimizer"] for r in records}
    # one composition per optimizer, the others copies; the search composes one more job (its
    # first values, for the objective's direction)
    assert len(calls) == len(optimizers) + (sweeper == "optuna")
    # each job ran with its own values
    assert sorted(r["hparams"]["optimizer.lr"] for r in records) == sorted(
        float(o.split("=")[1])
        for r in records
        for o in r["overrides"]
        if o.startswith("optimizer.lr=")
    )
