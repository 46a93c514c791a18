"""The tricks of experiments.core.speedups still find the internals they rely on, and no other module
of the package reaches into a library's private names."""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from experiments.core import speedups
from experiments.data.thermometer import ThermometerDataModule
from experiments.models.linear import LinearRegression

SOURCE = Path(__file__).resolve().parents[1] / "src"
HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}


def private_names(path: Path) -> list[str]:
    """`obj._name` on anything but self/cls, and `from x import _name`, in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in HYDRA_KEYS
        ):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
        if isinstance(node, ast.ImportFrom):
            found += [
                f"{path.name}:{node.lineno} import {a.name}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
    return found


def test_private_names_of_libraries_live_only_in_the_speedups_module():
    offenders = {
        str(p.relative_to(SOURCE)): private_names(p)
        for p in SOURCE.rglob("*.py")
        if p.name != "speedups.py"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_lightning_still_names_the_running_hook_on_the_module():
    """FastHookNames only pays while Lightning keeps setting this attribute around each hook."""
    seen = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(getattr(pl_module, speedups.HOOK_NAME_ATTRIBUTE))

    model = LinearRegression(optimizer=functools.partial(torch.optim.SGD, lr=1e-2))
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Watch()],
    )
    trainer.fit(model, datamodule=ThermometerDataModule())
    assert seen == ["on_train_batch_end"] * 2
    assert (
        speedups.HOOK_NAME_ATTRIBUTE not in model._modules
        and speedups.HOOK_NAME_ATTRIBUTE in vars(model)
    )


def test_exit_now_still_waits_for_threads_and_runs_exit_hooks(tmp_path: Path):
    script = textwrap.dedent(
        f"""
        import atexit, threading, time
        from experiments.core.speedups import exit_now
        def worker():
            time.sleep(0.3)
            open({str(tmp_path / "thread")!r}, "w").write("done")
        threading.Thread(target=worker).start()
        atexit.register(lambda: open({str(tmp_path / "atexit")!r}, "w").write("done"))
        print("flushed", end="")
        exit_now(3)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3 and done.stdout == "flushed"
    assert (tmp_path / "thread").read_text() == "done" and (
        tmp_path / "atexit"
    ).read_text() == "done"


def test_lightning_still_wraps_each_hook_in_the_profilers_profile():
    """QuietProfiler only pays while Lightning enters `profiler.profile(...)` around its hooks."""
    profiler = speedups.quiet_profiler()
    entered = []
    quiet = type(profiler).profile

    def counting(self, action_name):
        entered.append(action_name)
        return quiet(self, action_name)

    type(profiler).profile = counting
    model = LinearRegression(optimizer=functools.partial(torch.optim.SGD, lr=1e-2))
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        profiler=profiler,
    )
    trainer.fit(model, datamodule=ThermometerDataModule())
    assert any("training_step" in name for name in entered) and len(entered) > 50


@pytest.mark.slow  # a fresh process importing Lightning
def test_lightning_still_sets_the_nvml_check_and_the_package_removes_it_again(
    monkeypatch: pytest.MonkeyPatch,
):
    """skip_nvml_probe only pays while importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK and
    torch's Adam probes the accelerator on every step; a value the user set is left alone."""
    script = textwrap.dedent(
        f"""
        import os, inspect, torch
        from experiments.core import quiet, speedups
        import lightning.pytorch
        assert os.environ.get({speedups.NVML_CHECK!r}) == "1", "Lightning no longer sets it"
        quiet.quiet_lightning()
        print(os.environ.get({speedups.NVML_CHECK!r}), "check_available=True" in inspect.getsource(torch.optim.Optimizer))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != speedups.NVML_CHECK}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "True"]
    # the user's own value, seen before Lightning was imported, stays
    monkeypatch.setattr(speedups, "_USER_NVML_CHECK", "1")
    monkeypatch.setenv(speedups.NVML_CHECK, "1")
    speedups.skip_nvml_probe()
    assert os.environ[speedups.NVML_CHECK] == "1"


def test_hydra_parses_each_config_file_once_while_it_is_unchanged(tmp_path: Path):
    """parse_configs_once only pays while Hydra's ConfigRepository sets up its sources through
    initialize_sources and loads each file through a source's load_config: the cache must fill,
    a second composition must equal the first, and an edited file must be read again."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from experiments.core.config import CONF_DIR, register_resolvers

    register_resolvers()
    overrides = ["experiment=thermometer", "optimizer=adam", "+extra=1"]
    speedups.PARSED.clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="train"):
        first = OmegaConf.to_yaml(compose("train", overrides, return_hydra_config=True))
        parsed = {name for _, name in speedups.PARSED}
        assert {
            "train",
            "experiment/thermometer",
            "optimizer/adam",
            "hydra/output/default",
        } <= parsed
        again = compose("train", overrides, return_hydra_config=True)
        again.optimizer.lr = 123.0  # a composition's config is its own
        assert OmegaConf.to_yaml(compose("train", overrides, return_hydra_config=True)) == first

    (tmp_path / "app.yaml").write_text("value: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        assert compose("app").value == 1
        (tmp_path / "app.yaml").write_text("value: 22\n")
        assert compose("app").value == 22


def test_hydras_copies_of_its_config_repository_share_the_config_store():
    """share_config_store only pays while Hydra's CachingConfigRepository deep-copies the
    repository and with it the ConfigStore its structured source holds: with the trick the copy
    holds the store itself, without it a copy; what the store loads is still each caller's own."""
    from hydra._internal.config_repository import CachingConfigRepository, ConfigRepository
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    def held_store(repository: CachingConfigRepository) -> object:
        (store,) = [
            s.store for s in repository.delegate.get_sources() if s.scheme() == "structured"
        ]
        return store

    Plugins.instance()  # registers the config sources' kinds
    search_path = ConfigSearchPathImpl()
    search_path.append("hydra", "pkg://hydra.conf")
    search_path.append("schema", "structured://")
    repository = ConfigRepository(config_search_path=search_path)
    speedups.share_config_store()
    assert held_store(CachingConfigRepository(repository)) is ConfigStore.instance()
    del ConfigStore.__deepcopy__
    try:  # Hydra still copies it, so the trick still pays
        assert held_store(CachingConfigRepository(repository)) is not ConfigStore.instance()
    finally:
        speedups.share_config_store()
    store = ConfigStore.instance()
    store.store(name="speedups_probe", node={"value": 1})
    store.load("speedups_probe.yaml").node.value = 2
    assert store.load("speedups_probe.yaml").node.value == 1


def test_hydra_builds_a_defaults_lists_choices_map_only_where_one_interpolates(tmp_path: Path):
    """interpolation_map_when_needed only pays while Hydra builds the map in
    defaults_list._create_interpolation_map(overrides, defaults_list, self_added) for every node:
    the patch must be in place, leave an interpolated default working and change no config."""
    import inspect

    from hydra import compose, initialize_config_dir
    from hydra._internal import defaults_list

    from experiments.core.config import register_resolvers

    register_resolvers()
    build = defaults_list._create_interpolation_map
    assert getattr(build, "when_needed", False), "Hydra's function was not replaced"
    assert list(inspect.signature(build.__closure__[0].cell_contents).parameters) == [
        "overrides",
        "defaults_list",
        "self_added",
    ]
    for group, names in {"server": ["small", "large"], "db": ["small_db", "large_db"]}.items():
        (tmp_path / group).mkdir()
        for name in names:
            (tmp_path / group / f"{name}.yaml").write_text(f"name: {name}\n")
    (tmp_path / "app.yaml").write_text(
        "defaults:\n  - server: small\n  - db: ${server}_db\n  - _self_\n"
    )
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        assert compose("app", ["server=large"]).db.name == "large_db"  # the map, where needed
        assert compose("app").db.name == "small_db"


def test_lightning_still_keeps_its_stop_flag_where_withdraw_stop_takes_it_back():
    """Trick 7: the flag Lightning's SIGTERM handler sets is the trainer's signal connector's
    `received_sigterm`, which Trainer.received_sigterm reads; taking it back clears both."""
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    connector = getattr(trainer, speedups.SIGNAL_CONNECTOR)
    assert trainer.received_sigterm is False and connector.received_sigterm is False
    connector.received_sigterm = True
    assert trainer.received_sigterm is True
    assert speedups.withdraw_stop(trainer) is True
    assert trainer.received_sigterm is False and speedups.withdraw_stop(trainer) is False
