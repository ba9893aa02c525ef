"""Fixtures for the benchmark harness tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def quality() -> ModuleType:
    """``benchmarks/quality.py`` as a module (benchmarks is not a package)."""
    path = ROOT / "benchmarks" / "quality.py"
    spec = importlib.util.spec_from_file_location("promptbo_bench_quality", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
