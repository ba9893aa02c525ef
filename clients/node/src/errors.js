'use strict';
/**
 * The errors of the promptbo Node client, mirroring `promptbo.errors` of the Python package.
 *
 * Every failed RPC rejects with a `PromptboError`; the gRPC status code picks the subclass,
 * so remote callers can branch on the class instead of on numbers:
 *
 *     PromptboError
 *      ├── InvalidArgumentError      INVALID_ARGUMENT     the request is malformed; fix it
 *      ├── NotFoundError             NOT_FOUND            no such study, trial or vocabulary
 *      ├── AlreadyExistsError        ALREADY_EXISTS       a different study has that name
 *      ├── FailedPreconditionError   FAILED_PRECONDITION  the request conflicts with stored state
 *      ├── ResourceExhaustedError    RESOURCE_EXHAUSTED   a cap (active trials, size) is reached
 *      ├── UnauthenticatedError      UNAUTHENTICATED      missing or wrong bearer token
 *      ├── PermissionDeniedError     PERMISSION_DENIED    the token's role or scope forbids it
 *      └── UnavailableError          UNAVAILABLE          the server cannot be reached
 *
 * Any other status (DEADLINE_EXCEEDED, INTERNAL, ...) rejects with a plain `PromptboError`
 * whose `code` is the status name.
 */

const { status: Status } = require('@grpc/grpc-js');

/** Status number -> name, e.g. 5 -> 'NOT_FOUND'. */
const STATUS_NAMES = Object.fromEntries(
  Object.entries(Status).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v, k]),
);

class PromptboError extends Error {
  /**
   * @param {string} message what went wrong (the server's status details for RPC errors)
   * @param {{code?: string, grpcCode?: number, metadata?: object, cause?: unknown}} [opts]
   */
  constructor(message, opts = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = this.constructor.name;
    /** gRPC status code name, e.g. 'NOT_FOUND'. */
    this.code = opts.code || this.constructor.code || 'UNKNOWN';
    /** gRPC status code number, e.g. 5. */
    this.grpcCode = opts.grpcCode ?? Status[this.code] ?? Status.UNKNOWN;
    /** Trailing metadata of the failed call, when there was one. */
    this.metadata = opts.metadata;
  }
}
PromptboError.code = 'UNKNOWN';

function defineError(name, code) {
  const cls = { [name]: class extends PromptboError {} }[name];
  cls.code = code;
  return cls;
}

const InvalidArgumentError = defineError('InvalidArgumentError', 'INVALID_ARGUMENT');
const NotFoundError = defineError('NotFoundError', 'NOT_FOUND');
const AlreadyExistsError = defineError('AlreadyExistsError', 'ALREADY_EXISTS');
const FailedPreconditionError = defineError('FailedPreconditionError', 'FAILED_PRECONDITION');
const ResourceExhaustedError = defineError('ResourceExhaustedError', 'RESOURCE_EXHAUSTED');
const UnauthenticatedError = defineError('UnauthenticatedError', 'UNAUTHENTICATED');
const PermissionDeniedError = defineError('PermissionDeniedError', 'PERMISSION_DENIED');
const UnavailableError = defineError('UnavailableError', 'UNAVAILABLE');

/** gRPC status code name -> error class: the one table of the client. */
const ERRORS_BY_CODE = Object.freeze(
  Object.fromEntries(
    [
      InvalidArgumentError,
      NotFoundError,
      AlreadyExistsError,
      FailedPreconditionError,
      ResourceExhaustedError,
      UnauthenticatedError,
      PermissionDeniedError,
      UnavailableError,
    ].map((cls) => [cls.code, cls]),
  ),
);

/**
 * Converts an error of @grpc/grpc-js (an Error with numeric `code`, `details`, `metadata`)
 * to the matching `PromptboError`; anything that is not a gRPC status error is returned as is.
 */
function fromGrpcError(err) {
  if (err instanceof PromptboError || !err || typeof err.code !== 'number') return err;
  const code = STATUS_NAMES[err.code] || 'UNKNOWN';
  const cls = ERRORS_BY_CODE[code] || PromptboError;
  const message = err.details || err.message || code;
  return new cls(message, { code, grpcCode: err.code, metadata: err.metadata, cause: err });
}

module.exports = {
  PromptboError,
  InvalidArgumentError,
  NotFoundError,
  AlreadyExistsError,
  FailedPreconditionError,
  ResourceExhaustedError,
  UnauthenticatedError,
  PermissionDeniedError,
  UnavailableError,
  ERRORS_BY_CODE,
  fromGrpcError,
};
