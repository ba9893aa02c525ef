"""Fixtures for the benchmark harness tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(script: str) -> ModuleType:
    """``benchmarks/<script>.py`` as a module (benchmarks is not a package)."""
    spec = importlib.util.spec_from_file_location(f"promptbo_bench_{script}",
                                                  ROOT / "benchmarks" / f"{script}.py")
    assert spec and spec.loader
    if spec.name not in sys.modules:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[spec.name]


@pytest.fixture(scope="session")
def quality() -> ModuleType:
    return _load("quality")


@pytest.fixture(scope="session")
def holdout() -> ModuleType:
    return _load("holdout")


@pytest.fixture(scope="session")
def equal_calls() -> ModuleType:
    return _load("equal_calls")


@pytest.fixture(scope="session")
def transfer_tasks() -> ModuleType:
    return _load("transfer_tasks")
