"""The asyncio face of :class:`~promptbo.server.servicer.OptimizerServicer`.

The server runs on ``grpc.aio``: one event loop receives every RPC. The hot worker calls
(``SuggestTrials``, ``CompleteTrial(s)``, ``HeartbeatTrial``) run right on the loop when
:meth:`StudyManager.quick` says they cannot block for long (local storage, the study
in memory, suggestions ready or cheap and small); this saves the thread hand-off and the
lock and GIL traffic that cost a thread-pool server most of its time on small calls.
``quick`` holds the study lock for the inline call and releases it itself (the study
cache owns that lock).
Everything else (creating studies, listings, a GP fit on the request path) runs on a
thread pool, so a slow call never stalls the loop.

Streams hold no thread: ``UploadVocabulary`` checks each chunk on the loop as it arrives
(see :mod:`~promptbo.server.upload`) and only the final assembly runs on the pool;
``WatchStudy`` waits on an asyncio queue the manager's publisher feeds. Open watch streams
are capped in all and per client (:class:`~promptbo.server.limits.Limits`).

The sync servicer does all conversion and error mapping; this module only dispatches. Its
``context.abort`` raises :class:`_Abort` here, which becomes ``await context.abort`` on
the loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import grpc

from promptbo.errors import PromptboError
from promptbo.server.auth import CURRENT_PRINCIPAL
from promptbo.server.limits import Limits, clip
from promptbo.server.manager import Event, StudyManager
from promptbo.server.pool_upload import PoolUpload
from promptbo.server.servicer import MAX_ERROR_CHARS, OptimizerServicer, grpc_code, watch_message
from promptbo.server.upload import TableUpload, VocabularyUpload
from promptbo.server.wire import MalformedRequest
from promptbo.v1 import optimizer_service_pb2_grpc as api_grpc

#: Events a slow WatchStudy reader may fall behind by before its stream is closed.
MAX_WATCH_BACKLOG = 10_000


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _SyncContext:
    """What the sync servicer uses of a ``grpc.ServicerContext``, over an aio context."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self.callbacks: list[Callable[[], Any]] = []
        #: The caller's principal, read on the loop (contextvars do not reach the pool).
        self.principal = CURRENT_PRINCIPAL.get()

    def abort(self, code: grpc.StatusCode, details: str):
        raise _Abort(code, details)

    def invocation_metadata(self):
        return self._context.invocation_metadata()

    def add_callback(self, callback: Callable[[], Any]) -> bool:
        self.callbacks.append(callback)
        return True

    def is_active(self) -> bool:
        if self._context.done() or self._context.cancelled():
            return False
        remaining = self._context.time_remaining()
        return remaining is None or remaining > 0


class StreamCounter:
    """Open streams in all and per client key; :meth:`open` refuses beyond the caps."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def open(self, client: str) -> str:
        """Counts a new stream; returns "" or, when a cap is reached, why it is refused."""
        with self._lock:
            if sum(self._open.values()) >= self.total:
                return f"the server has {self.total} open WatchStudy streams, its limit"
            if self._open[client] >= self.per_client:
                return (
                    f"this client has {self.per_client} open WatchStudy streams, the "
                    "per-client limit; close one first"
                )
            self._open[client] += 1
            return ""

    def close(self, client: str) -> None:
        with self._lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]


class AsyncOptimizerServicer(api_grpc.OptimizerServiceServicer):
    """Dispatches each RPC to ``servicer`` inline or on ``executor`` (see module doc).

    ``client_key`` names the caller of a context for the per-client stream cap (the
    principal when tokens are configured, else the peer's address).
    """

    def __init__(
        self,
        servicer: OptimizerServicer,
        executor: Executor,
        limits: Limits | None = None,
        client_key: Callable[[grpc.aio.ServicerContext], str] | None = None,
    ) -> None:
        self._sync = servicer
        self._manager: StudyManager = servicer.manager
        self._executor = executor
        limits = limits or self._manager.limits
        self._watches = StreamCounter(limits.max_watch_streams, limits.max_watch_streams_per_client)
        self._client_key = client_key or _client_key

    async def _call(self, name: str, request, context, count_field: str | None = None):
        """Runs servicer method ``name``: inline when ``count_field`` is given (a hot call:
        the field holds the trials it wants, "" for none) and the manager says the call
        is quick, else on the thread pool."""
        ctx = _SyncContext(context)
        method = getattr(self._sync, name)
        try:
            with self._quick(request, count_field) as quick:
                if quick:
                    return method(request, ctx)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, method, request, ctx)
        except _Abort as err:
            await context.abort(err.code, err.details)

    def _quick(self, request, count_field: str | None) -> AbstractContextManager[bool]:
        if count_field is None or isinstance(request, MalformedRequest):
            return nullcontext(False)
        count = getattr(request, count_field) if count_field else 0
        if count_field == "count":
            count = max(count, 1)
        return self._manager.quick(request.study, count)

    # --- hot calls: inline when quick -------------------------------------------------
    async def SuggestTrials(self, request, context):
        return await self._call("SuggestTrials", request, context, "count")

    async def CompleteTrial(self, request, context):
        return await self._call("CompleteTrial", request, context, "suggest_count")

    async def CompleteTrials(self, request, context):
        return await self._call("CompleteTrials", request, context, "suggest_count")

    async def HeartbeatTrial(self, request, context):
        return await self._call("HeartbeatTrial", request, context, "")

    # --- everything else: on the thread pool ------------------------------------------
    async def CreateStudy(self, request, context):
        return await self._call("CreateStudy", request, context)

    async def GetStudy(self, request, context):
        return await self._call("GetStudy", request, context)

    async def ListStudies(self, request, context):
        return await self._call("ListStudies", request, context)

    async def DeleteStudy(self, request, context):
        return await self._call("DeleteStudy", request, context)

    async def UpdateStudy(self, request, context):
        return await self._call("UpdateStudy", request, context)

    async def ListTrials(self, request, context):
        return await self._call("ListTrials", request, context)

    async def GetBestTrial(self, request, context):
        return await self._call("GetBestTrial", request, context)

    async def AddTrials(self, request, context):
        return await self._call("AddTrials", request, context)

    async def GetRecommendation(self, request, context):
        return await self._call("GetRecommendation", request, context)

    # --- streams: no thread held ------------------------------------------------------
    async def UploadVocabulary(self, request_iterator: AsyncIterator, context):
        upload = await self._receive(VocabularyUpload(), request_iterator, context)
        return await self._call("store_vocabulary", upload, context)

    async def UploadPool(self, request_iterator: AsyncIterator, context):
        upload = await self._receive(PoolUpload(), request_iterator, context)
        return await self._call("store_pool", upload, context)

    @staticmethod
    async def _receive(upload: TableUpload, request_iterator: AsyncIterator, context):
        """``upload`` with every chunk of the stream; aborts at the first bad chunk."""
        try:
            async for chunk in request_iterator:
                upload.add(chunk)  # refuses an oversized stream at its first bad chunk
        except PromptboError as err:
            await context.abort(grpc_code(err), clip(str(err), MAX_ERROR_CHARS))
        return upload

    async def WatchStudy(self, request, context):
        if isinstance(request, MalformedRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details)
        client = self._client_key(context)
        refused = self._watches.open(client)
        if refused:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        try:
            async for msg in self._watch(request.study, context):
                yield msg
        finally:
            self._watches.close(client)

    async def _watch(self, study: str, context):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event | None | str] = asyncio.Queue()

        def deliver(event: Event | None) -> None:  # on the publishing thread
            loop.call_soon_threadsafe(_enqueue, event)

        def _enqueue(event: Event | None) -> None:
            events.put_nowait(event if events.qsize() < MAX_WATCH_BACKLOG else "overflow")

        try:
            first, unsubscribe = await loop.run_in_executor(
                self._executor, self._manager.subscribe, study, deliver
            )
        except PromptboError as err:
            await context.abort(grpc_code(err), clip(str(err), MAX_ERROR_CHARS))
        try:
            if first.kind == "done":
                yield watch_message(first)
                return
            while True:
                event = await events.get()
                if event is None:
                    return
                if isinstance(event, str):
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the watcher fell {MAX_WATCH_BACKLOG} events behind; reconnect",
                    )
                    return
                yield watch_message(event)
                if event.kind == "done":
                    return
        finally:
            unsubscribe()


def _client_key(context: grpc.aio.ServicerContext) -> str:
    """The caller's principal, else its address without its port ("ipv4:127.0.0.1")."""
    principal = CURRENT_PRINCIPAL.get()
    if principal is not None:
        return f"principal:{principal.name}"
    peer = context.peer() or ""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer
