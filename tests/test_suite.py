"""The suite's own arrangement: what keeps it to minutes on two workers."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import TRAINED_ONCE

TESTS = Path(__file__).resolve().parent


def test_every_module_scoped_fixture_is_built_on_one_worker_only():
    """A module-scoped fixture is built once per xdist worker that runs a test using it; listed in
    TRAINED_ONCE, its tests share one worker and it is built once."""
    found = set()
    for path in TESTS.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                for decorator in node.decorator_list:
                    if isinstance(decorator, ast.Call) and any(
                        k.arg == "scope"
                        and getattr(k.value, "value", None) in ("module", "session")
                        for k in decorator.keywords
                    ):
                        found.add(node.name)
    assert found and found == set(TRAINED_ONCE)
