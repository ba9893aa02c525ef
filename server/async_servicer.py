"""The asyncio face of :class:`~promptbo.server.servicer.OptimizerServicer`.

The server runs on ``grpc.aio``: one event loop receives every RPC. The hot worker calls
(``SuggestTrials``, ``CompleteTrial(s)``, ``HeartbeatTrial``) run right on the loop when
:meth:`StudyManager.quick_lock` says they cannot block for long (local storage, the study
in memory, suggestions ready or cheap); this saves the thread hand-off and the lock and
GIL traffic that cost a thread-pool server most of its time on small calls. Everything
else (creating studies, uploads, listings, a GP fit on the request path) runs on a thread
pool, so a slow call never stalls the loop.

The sync servicer does all conversion and error mapping; this module only dispatches. Its
``context.abort`` raises :class:`_Abort` here, which becomes ``await context.abort`` on
the loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

import grpc

from promptbo.server.manager import StudyManager
from promptbo.server.servicer import OptimizerServicer
from promptbo.v1 import optimizer_service_pb2_grpc as api_grpc

_END = object()


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _SyncContext:
    """What the sync servicer uses of a ``grpc.ServicerContext``, over an aio context."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self.callbacks: list[Callable[[], Any]] = []

    def abort(self, code: grpc.StatusCode, details: str):
        raise _Abort(code, details)

    def invocation_metadata(self):
        return self._context.invocation_metadata()

    def add_callback(self, callback: Callable[[], Any]) -> bool:
        self.callbacks.append(callback)
        return True

    def is_active(self) -> bool:
        return not self._context.done()


class AsyncOptimizerServicer(api_grpc.OptimizerServiceServicer):
    """Dispatches each RPC to ``servicer`` inline or on ``executor`` (see module doc)."""

    def __init__(self, servicer: OptimizerServicer, executor: Executor) -> None:
        self._sync = servicer
        self._manager: StudyManager = servicer.manager
        self._executor = executor

    async def _call(self, name: str, request, context, quick: threading.RLock | None = None):
        ctx = _SyncContext(context)
        method = getattr(self._sync, name)
        try:
            if quick is not None:
                try:
                    return method(request, ctx)
                finally:
                    quick.release()
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, method, request, ctx)
        except _Abort as err:
            await context.abort(err.code, err.details)

    # --- hot calls: inline when quick -------------------------------------------------
    async def SuggestTrials(self, request, context):
        quick = self._manager.quick_lock(request.study, max(request.count, 1))
        return await self._call("SuggestTrials", request, context, quick)

    async def CompleteTrial(self, request, context):
        quick = self._manager.quick_lock(request.study, request.suggest_count)
        return await self._call("CompleteTrial", request, context, quick)

    async def CompleteTrials(self, request, context):
        quick = self._manager.quick_lock(request.study, request.suggest_count)
        return await self._call("CompleteTrials", request, context, quick)

    async def HeartbeatTrial(self, request, context):
        quick = self._manager.quick_lock(request.study)
        return await self._call("HeartbeatTrial", request, context, quick)

    # --- everything else: on the thread pool ------------------------------------------
    async def CreateStudy(self, request, context):
        return await self._call("CreateStudy", request, context)

    async def GetStudy(self, request, context):
        return await self._call("GetStudy", request, context)

    async def ListStudies(self, request, context):
        return await self._call("ListStudies", request, context)

    async def DeleteStudy(self, request, context):
        return await self._call("DeleteStudy", request, context)

    async def ListTrials(self, request, context):
        return await self._call("ListTrials", request, context)

    async def GetBestTrial(self, request, context):
        return await self._call("GetBestTrial", request, context)

    async def AddTrials(self, request, context):
        return await self._call("AddTrials", request, context)

    async def GetRecommendation(self, request, context):
        return await self._call("GetRecommendation", request, context)

    async def UploadVocabulary(self, request_iterator: AsyncIterator, context):
        chunks = [chunk async for chunk in request_iterator]
        ctx = _SyncContext(context)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, self._sync.UploadVocabulary, iter(chunks), ctx
            )
        except _Abort as err:
            await context.abort(err.code, err.details)

    async def WatchStudy(self, request, context):
        ctx = _SyncContext(context)
        events = self._sync.WatchStudy(request, ctx)
        loop = asyncio.get_running_loop()
        try:
            while True:
                msg = await loop.run_in_executor(self._executor, next, events, _END)
                if msg is _END:
                    return
                yield msg
        except _Abort as err:
            await context.abort(err.code, err.details)
        finally:
            # Stops the generator: a next() still running on its thread returns within
            # the watch poll interval and the generator unregisters itself.
            for callback in ctx.callbacks:
                callback()
