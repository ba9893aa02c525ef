"""Three ``promptbo serve`` replicas on one PostgreSQL schema, and a client that sends each
call to the next of them in turn (so a retried call, an ask and its tell, a watch and the
results it reports each reach another replica)."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from types import TracebackType

import grpc

import promptbo
from benchmarks.replicas import Replica
from promptbo.v1 import optimizer_service_pb2_grpc as api_grpc
from tests.storage.conftest import _postgres_schema, postgres_url


class RoundRobinStub:
    """An ``OptimizerServiceStub`` whose every call goes to the next of ``stubs``."""

    def __init__(self, stubs: list[api_grpc.OptimizerServiceStub]) -> None:
        self._stubs = stubs
        self._turn = itertools.count()
        self._lock = threading.Lock()
        #: How many calls each replica got.
        self.calls = [0] * len(stubs)

    def __getattr__(self, name: str):
        with self._lock:
            i = next(self._turn) % len(self._stubs)
            self.calls[i] += 1
        return getattr(self._stubs[i], name)


class ReplicatedServers:
    """Starts three replicas (port 0, a schema of their own, dropped on exit); skips
    without ``PROMPTBO_TEST_POSTGRES_URL``. Each server stops on exit, by SIGTERM, then
    SIGKILL after 30 s."""

    def __init__(self, folder: Path, replicas: int = 3) -> None:
        self.folder = folder
        self.count = replicas
        self.replicas: list[Replica] = []
        self._channels: list[grpc.Channel] = []
        self._drop = None

    def __enter__(self) -> ReplicatedServers:
        url, self._drop = _postgres_schema(postgres_url())
        try:
            self.replicas = [Replica(url, self.folder, i) for i in range(self.count)]
            for r in self.replicas:
                r.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def client(self, client_id: str | None = None) -> promptbo.Client:
        """A client taking the replicas in turn (its channels close with the servers)."""
        channels = [grpc.insecure_channel(r.address) for r in self.replicas]
        self._channels += channels
        stub = RoundRobinStub([api_grpc.OptimizerServiceStub(c) for c in channels])
        return promptbo.Client(stub=stub, client_id=client_id, timeout=60)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for c in self._channels:
            c.close()
        for r in self.replicas:
            r.stop()
        if self._drop is not None:
            self._drop()
            self._drop = None
