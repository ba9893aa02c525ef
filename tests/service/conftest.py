"""Fixtures: one client test suite over an in-process servicer and a real server."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import promptbo
from promptbo.server.app import ServerOptions, create_server
from promptbo.server.local import LocalStub
from promptbo.server.manager import StudyManager
from promptbo.server.servicer import OptimizerServicer
from promptbo.server.storage import open_storage


@pytest.fixture(params=["in-process", "grpc"])
def client(request, tmp_path):
    """A client wired to a fresh server: in-process servicer or a real one on port 0."""
    with one_server(request.param, tmp_path) as c:
        yield c


@contextlib.contextmanager
def one_server(kind: str, tmp_path: Path) -> Iterator[promptbo.Client]:
    """A client of a fresh server of ``kind`` (``in-process`` or ``grpc``), stopped after."""
    url = os.environ.get("PROMPTBO_TEST_CLIENT_STORAGE") or f"sqlite:///{tmp_path / 'studies.db'}"
    storage = open_storage(url)
    if kind == "in-process":
        servicer = OptimizerServicer(StudyManager(storage))
        yield promptbo.Client(stub=LocalStub(servicer))
        storage.close()
        return
    server, port, _ = create_server(storage, ServerOptions(port=0))
    c = promptbo.Client(f"127.0.0.1:{port}")
    yield c
    c.close()
    server.stop(None).wait()
    storage.close()


@pytest.fixture
def vocab_table() -> promptbo.VocabularyTable:
    """A small vocabulary with 4-dim embeddings on a grid, tokens ' w0' .. ' w63'."""
    rng = np.random.default_rng(0)
    n = 64
    return promptbo.VocabularyTable(
        tokens=[f" w{i}" for i in range(n)],
        token_ids=list(range(1000, 1000 + n)),
        embeddings=rng.normal(size=(n, 4)).astype(np.float32),
    )
