"""Every module of benchmarks/ imports cleanly and runs nothing on import.

CI never runs the benchmarks (they take minutes to hours), so without this a renamed masklm function would break
one unnoticed. A third-party package a benchmark needs and this environment lacks skips that module; a missing
masklm or benchmarks name fails.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
MODULES = sorted(m.name for m in pkgutil.iter_modules([str(BENCHMARKS)]))


def test_every_script_is_found():
    assert {"common", "throughput", "finetune_vs_hf"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_imports_without_running(name, capsys):
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] in ("masklm", "benchmarks"):
            raise
        pytest.skip(f"benchmarks.{name} needs {e.name}, which is not installed")
    out, err = capsys.readouterr()
    assert out == "" and err == "", "importing a benchmark must not run it"
    if name != "common":
        assert callable(module.main), f"benchmarks/{name}.py has no main()"
