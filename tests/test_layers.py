"""The code's layers import only downward, imports inside functions included, and no imports go
round in a cycle: plain modules at the bottom know nothing of torch-based building blocks, those
nothing of a fit, a fit nothing of the process and Hydra entry points on top, and the single run
and the population never import each other (src/experiments/__init__.py describes the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Each module's layer, by name; a package's modules share its layer unless named.
LAYERS = {
    # 0: the plain core: configs, overrides, a run's record, run directories, a job's bookkeeping
    "experiments": 0,
    "experiments.core": 0,
    # 1: building blocks: data, models, callbacks, loggers, reports, a population's parts
    "experiments.data": 1,
    "experiments.models": 1,
    "experiments.callbacks": 1,
    "experiments.build": 1,
    "experiments.hparams": 1,
    "experiments.loggers": 1,
    "experiments.report": 1,
    "experiments.population": 1,
    "experiments.dynamics": 1,
    # 2: one fit each, never importing each other
    "experiments.run": 2,
    "experiments.population.group": 2,
    # 3: the process and Hydra: entry points, Hydra's callbacks and plugins
    "experiments.api": 3,
    "experiments.cli": 3,
    "experiments.train": 3,
    "experiments.evaluate": 3,
    "experiments.lr_find": 3,
    "experiments.landscape": 3,
    "experiments.gradcheck": 3,
    "experiments.collect": 3,
    "experiments.hydra_callbacks": 3,
    "hydra_plugins": 3,
}
FITS = ("experiments.run", "experiments.population.group")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer of a module, or of the closest package named in LAYERS."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return LAYERS[".".join(parts[:end])]
    raise AssertionError(f"{module} has no layer in tests/test_layers.py")


def ours(name: str) -> bool:
    return name.split(".")[0] in ("experiments", "hydra_plugins")


def imports_of(path: Path) -> set[str]:
    """Every module of ours this file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if ours(alias.name)}
        elif isinstance(node, ast.ImportFrom) and node.module and ours(node.module):
            found.add(node.module)
            found |= {
                f"{node.module}.{alias.name}"
                for alias in node.names
                if (SRC / node.module.replace(".", "/") / f"{alias.name}.py").is_file()
            }
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in SRC.rglob("*.py")}
    return {
        name: {target for target in imports_of(path) if target in modules and target != name}
        for name, path in modules.items()
    }


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of imports, if there is one (a package imported by its own modules does not count)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges[node]):
            if node.startswith(target + "."):  # a package's __init__
                continue
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if state.get(target) is None and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if state.get(node) is None and (found := visit(node)):
            return found
    return None


def upward(edges: dict[str, set[str]]) -> list[str]:
    wrong = [
        f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)})"
        for source, targets in edges.items()
        for target in targets
        if layer(target) > layer(source)
    ]
    for a in FITS:
        wrong += [
            f"{a} imports {b}: the single run and the population are fits of their own"
            for b in FITS
            if b != a and b in edges[a]
        ]
    return sorted(wrong)


def test_imports_point_only_down_a_layer_and_close_no_cycle():
    edges = graph()
    assert len(edges) > 40 and all(layer(module) in (0, 1, 2, 3) for module in edges)
    assert upward(edges) == []
    assert cycle(edges) is None


def test_the_check_fails_on_an_upward_import_inside_a_function_and_on_a_cycle():
    edges = graph()
    edges["experiments.core.state"] = edges["experiments.core.state"] | {
        "experiments.cli"
    }  # as `def f(): from experiments.cli import run_cli`
    assert upward(edges) == ["experiments.core.state (layer 0) imports experiments.cli (layer 3)"]
    edges = graph()
    edges["experiments.models.base"] = edges["experiments.models.base"] | {"experiments.build"}
    found = cycle(edges)
    assert (
        found is not None
        and found[0] == found[-1]
        and {"experiments.build", "experiments.models.base"} <= set(found)
    )


def test_the_tutorial_models_hold_no_population_code():
    for name in ("linear", "mlp", "base"):
        text = (SRC / "experiments" / "models" / f"{name}.py").read_text()
        assert not any(
            word in text for word in ("replica", "stacked", "population", "path_points")
        ), name


def test_metrics_json_is_named_by_one_module_and_read_by_one_function():
    """A run's record is read by experiments.core.state.read_record (final_status on top of it) and
    written by write_record: no other module spells its file name."""
    spelled = [
        module_name(path)
        for path in SRC.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value == "metrics.json"
    ]
    assert spelled == ["experiments.core.state"]
