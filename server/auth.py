"""Principals and scopes: who may call what, on which studies.

A server started with a principals file (``promptbo serve --principals-file F``) knows
several tokens, each naming a :class:`Principal`::

    {"principals": [
        {"name": "ops",      "token_file": "/etc/promptbo/ops.token", "role": "admin"},
        {"name": "team-a",   "token": "…", "role": "write", "study_prefix": "team-a-"},
        {"name": "viewer",   "token": "…", "role": "read"}
    ]}

Roles nest: ``read`` may get and list studies and trials and watch them; ``write`` may also
create studies, upload vocabularies and run trials (SuggestTrials, CompleteTrial(s),
HeartbeatTrial, AddTrials); ``admin`` may also delete studies and complete or heartbeat any
principal's trial. With a ``study_prefix`` a principal only sees and touches studies whose
names start with it (ListStudies shows only those). Health checks and reflection stay open.

:class:`AuthInterceptor` authenticates every call (the token in ``authorization: Bearer``
metadata, compared in constant time against every configured token), checks the role of
the method and the scope of the request's study, and makes the caller's
:class:`Principal` available to the servicer through :data:`CURRENT_PRINCIPAL`, so the
manager binds each trial to the principal that took it.
"""

from __future__ import annotations

import contextvars
import enum
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class Role(enum.IntEnum):
    READ = 1
    WRITE = 2
    ADMIN = 3


#: The least role each OptimizerService method needs (unknown methods need ADMIN).
METHOD_ROLES: dict[str, Role] = {
    "GetStudy": Role.READ,
    "ListStudies": Role.READ,
    "ListTrials": Role.READ,
    "GetBestTrial": Role.READ,
    "GetRecommendation": Role.READ,
    "WatchStudy": Role.READ,
    "CreateStudy": Role.WRITE,
    "UploadVocabulary": Role.WRITE,
    "UploadPool": Role.WRITE,
    "SuggestTrials": Role.WRITE,
    "CompleteTrial": Role.WRITE,
    "CompleteTrials": Role.WRITE,
    "HeartbeatTrial": Role.WRITE,
    "AddTrials": Role.WRITE,
    "UpdateStudy": Role.WRITE,
    "DeleteStudy": Role.ADMIN,
}


@dataclass(frozen=True)
class Principal:
    """A named token: its role and the study-name prefix it is confined to ("" = all)."""

    name: str
    role: Role
    study_prefix: str = ""

    def may_touch(self, study: str) -> bool:
        return study.startswith(self.study_prefix)


#: The principal of the call being served (None without principals).
CURRENT_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "promptbo_principal", default=None
)


class Principals:
    """The configured tokens and their principals."""

    def __init__(self, entries: Sequence[tuple[str, Principal]]) -> None:
        if not entries:
            raise ValueError("a principals file must name at least one principal")
        names = [p.name for _, p in entries]
        if len(set(names)) != len(names):
            raise ValueError("principal names must be unique")
        tokens = [t for t, _ in entries]
        if len(set(tokens)) != len(tokens) or any(not t for t in tokens):
            raise ValueError("every principal needs its own non-empty token")
        self._entries = [(f"Bearer {t}".encode(), p) for t, p in entries]

    @classmethod
    def load(cls, path: str | Path) -> Principals:
        """Reads a principals file (see the module docstring). Raises ValueError when
        it is malformed, naming the entry."""
        doc = json.loads(Path(path).read_text())
        entries = []
        for i, item in enumerate(doc.get("principals", [])):
            try:
                name = str(item["name"])
                role = Role[str(item.get("role", "read")).upper()]
                token = item.get("token") or Path(item["token_file"]).read_text().strip()
            except (KeyError, TypeError) as err:
                raise ValueError(
                    f"principal {i} of {path}: needs name, role (read, write or admin) "
                    f"and token or token_file ({err})"
                ) from None
            prefix = str(item.get("study_prefix", ""))
            entries.append((token, Principal(name, role, prefix)))
        return cls(entries)

    def identify(self, metadata) -> Principal | None:
        """The principal whose token the ``authorization`` metadata carries, or None.
        Compares against every token in constant time."""
        given = b""
        for key, value in metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
        found = None
        for expected, principal in self._entries:
            if hmac.compare_digest(given, expected):
                found = principal
        return found


def _study_of(request) -> str | None:
    for field in ("study", "name"):
        value = getattr(request, field, None)
        if isinstance(value, str):
            return value
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates and authorizes every OptimizerService call (see module doc)."""

    def __init__(self, principals: Principals, service_prefix: str) -> None:
        self._principals = principals
        self._prefix = service_prefix

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if method.startswith(_OPEN_METHODS) or handler is None:
            return handler
        principal = self._principals.identify(handler_call_details.invocation_metadata)
        if principal is None:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                            "missing or wrong bearer token: send 'authorization: Bearer "
                            "<token>' metadata")
        name = method.rsplit("/", 1)[-1]
        need = METHOD_ROLES.get(name, Role.ADMIN) if method.startswith(self._prefix) \
            else Role.ADMIN
        if principal.role < need:
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED,
                            f"principal {principal.name!r} has role {principal.role.name.lower()}"
                            f"; {name} needs {need.name.lower()}")
        return _scoped(handler, principal, name)


def _refusal(handler, code: grpc.StatusCode, details: str):
    async def deny(request, context):
        await context.abort(code, details)

    async def deny_stream(request, context):
        await context.abort(code, details)
        yield  # pragma: no cover - makes this an async generator

    if handler.response_streaming:
        return handler._replace(unary_stream=deny_stream, stream_stream=deny_stream)
    return handler._replace(unary_unary=deny, stream_unary=deny)


def _scoped(handler, principal: Principal, method: str):
    """``handler`` with the principal set for the servicer and its study scope checked."""

    async def check(request, context) -> None:
        study = _study_of(request)
        if study is not None and method != "ListStudies" and not principal.may_touch(study):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"principal {principal.name!r} may only touch studies whose names start "
                f"with {principal.study_prefix!r}",
            )

    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(request, context):
            await check(request, context)
            CURRENT_PRINCIPAL.set(principal)
            response = await inner(request, context)
            if method == "ListStudies" and principal.study_prefix:
                kept = [s for s in response.studies if principal.may_touch(s.name)]
                del response.studies[:]
                response.studies.extend(kept)
            return response

        return handler._replace(unary_unary=unary)
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        async def stream(request, context):
            await check(request, context)
            CURRENT_PRINCIPAL.set(principal)
            async for msg in inner_stream(request, context):
                yield msg

        return handler._replace(unary_stream=stream)
    if handler.stream_unary is not None:
        inner_upload = handler.stream_unary

        async def upload(request_iterator, context):
            CURRENT_PRINCIPAL.set(principal)
            return await inner_upload(request_iterator, context)

        return handler._replace(stream_unary=upload)
    return handler
