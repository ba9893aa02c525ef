"""The exceptions of promptbo, shared by the server and the client.

Every error the service can report is one of these classes. The server maps each to a
gRPC status code through :data:`STATUS_CODES`; the client maps the code back to the same
class, so code that calls a remote study sees the same exceptions as code that embeds
the engine::

    PromptboError
     ├── InvalidArgumentError      INVALID_ARGUMENT     the request is malformed; fix it
     ├── NotFoundError             NOT_FOUND            no such study, trial or vocabulary
     ├── AlreadyExistsError        ALREADY_EXISTS       a different study has that name
     ├── FailedPreconditionError   FAILED_PRECONDITION  the request conflicts with stored state
     ├── ResourceExhaustedError    RESOURCE_EXHAUSTED   a cap (active trials, size) is reached
     ├── UnauthenticatedError      UNAUTHENTICATED      missing or wrong bearer token
     ├── PermissionDeniedError     PERMISSION_DENIED    the token's role or scope forbids it
     ├── CancelledError            CANCELLED            the caller went away (deadline, cancel)
     └── UnavailableError          UNAVAILABLE          the server cannot be reached

This module imports neither gRPC nor NumPy: status codes are given by their names.
"""

from __future__ import annotations


class PromptboError(Exception):
    """Base class of every promptbo error. ``code`` is the gRPC status code name."""

    code = "UNKNOWN"


class InvalidArgumentError(PromptboError, ValueError):
    code = "INVALID_ARGUMENT"


class NotFoundError(PromptboError, LookupError):
    code = "NOT_FOUND"


class AlreadyExistsError(PromptboError):
    code = "ALREADY_EXISTS"


class FailedPreconditionError(PromptboError):
    code = "FAILED_PRECONDITION"


class ResourceExhaustedError(PromptboError):
    code = "RESOURCE_EXHAUSTED"


class UnauthenticatedError(PromptboError):
    code = "UNAUTHENTICATED"


class PermissionDeniedError(PromptboError):
    code = "PERMISSION_DENIED"


class CancelledError(PromptboError):
    code = "CANCELLED"


class UnavailableError(PromptboError, ConnectionError):
    code = "UNAVAILABLE"


#: Error class -> gRPC status code name, the one table both sides use.
STATUS_CODES: dict[type[PromptboError], str] = {
    cls: cls.code
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        ResourceExhaustedError,
        UnauthenticatedError,
        PermissionDeniedError,
        CancelledError,
        UnavailableError,
    )
}

#: gRPC status code name -> error class, for the client.
ERRORS_BY_CODE: dict[str, type[PromptboError]] = {code: cls for cls, code in STATUS_CODES.items()}


def error_for_code(code_name: str, message: str) -> PromptboError:
    """Returns the promptbo error for a gRPC status code name (``PromptboError`` if unknown)."""
    cls = ERRORS_BY_CODE.get(code_name, PromptboError)
    return cls(message)
