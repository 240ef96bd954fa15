"""The client's exceptions, and the one place where gRPC status codes become them.

Users catch these instead of ``grpc.RpcError``: a training script should not need to
know the transport to tell "the server is down" from "you attached the wrong job".
"""

from __future__ import annotations

import grpc


class ParamschedError(RuntimeError):
    """Base class of every error the paramsched client raises.

    ``code`` is the gRPC status code that caused it, when one did.
    """

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class ScheduleUnavailableError(ParamschedError):
    """No values for the iteration about to run arrived within ``wait_timeout``.

    Raised instead of guessing a value: the message names the server, the job, the
    iteration and how long the client waited.
    """


class DecisionRequiredError(ParamschedError):
    """The next values wait for an epoch's validation decision nobody reported.

    A ReduceOnPlateau scheduler decides at each epoch end; some rank must call
    ``handle.end_epoch(metrics)`` (``metrics=None`` when no validation ran).
    """


class JobNotFoundError(ParamschedError):
    """Attaching without a config to a job the server does not know."""


class JobSpecMismatchError(ParamschedError):
    """The job exists with a different config (the server's message shows the difference)."""


class StaleGenerationError(ParamschedError):
    """This rank is fenced and must stop: the job was resumed from a checkpoint (or
    started over, or taken by another run) after this rank attached. Subclasses say why
    when it is something else."""


class JobReplacedError(StaleGenerationError):
    """The job this rank ran was deleted and created again under the same id, or the job
    store lost it: its values are gone, so this rank must stop (resume the new job from a
    checkpoint, or start a new job)."""


class ResumeRequiredError(ParamschedError):
    """This run attached to a job that already has progress from another run.

    Before the first step, do one of: ``handle.load_state_dict(checkpoint)`` to resume,
    ``handle.start_over()`` to train the job again from iteration 0 (audited), or attach
    with a new job id.
    """


class PermissionDeniedError(ParamschedError):
    """The token may not do this (another job's, or an admin-only action)."""


class InvalidArgumentError(ParamschedError, ValueError):
    """The server rejected an input; its message names the field."""


class AttachError(ParamschedError, ValueError):
    """The optimizer does not fit the job (param-group count, missing keys)."""


class EpochError(ParamschedError, ValueError):
    """``end_epoch`` called where no epoch ends."""


#: codes worth retrying with backoff: the server is down, restarting or overloaded.
RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
)

_BY_CODE: dict[grpc.StatusCode, type[ParamschedError]] = {
    grpc.StatusCode.NOT_FOUND: JobNotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: JobSpecMismatchError,
    grpc.StatusCode.FAILED_PRECONDITION: StaleGenerationError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}
# The server's trailing metadata on FAILED_PRECONDITION: why this rank is fenced.
FENCE_REASON_KEY = "paramsched-fence-reason"
_BY_FENCE_REASON: dict[str, type[ParamschedError]] = {
    "incarnation": JobReplacedError,
    "lost": JobReplacedError,
}


def fence_reason(exc: grpc.RpcError) -> str:
    """Why the server fenced this rank (``generation``, ``incarnation``, ``lost``)."""
    trailing = getattr(exc, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == FENCE_REASON_KEY:
            return str(value)
    return "generation"


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` is a transport failure that a later attempt may not hit."""
    return isinstance(exc, grpc.RpcError) and _code(exc) in RETRYABLE_CODES


def is_retryable_report(exc: BaseException) -> bool:
    """``is_retryable``, or CANCELLED: for progress reports (idempotent: the values of
    an iteration never change), which the client never cancels itself, so a CANCELLED
    one was cut off by a server shutting down mid-call, as a restart does."""
    return is_retryable(exc) or (isinstance(exc, grpc.RpcError)
                                 and _code(exc) == grpc.StatusCode.CANCELLED)


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    return code() if callable(code) else None


def from_rpc_error(exc: grpc.RpcError, what: str, *, server: str) -> ParamschedError:
    """Translate a non-retryable ``grpc.RpcError`` into the matching client error.

    ``what`` says what the call was for (it names the job); ``server`` is the target:
    every message says which server answered, for the operator reading the log.
    """
    code = _code(exc)
    details_fn = getattr(exc, "details", None)
    details = details_fn() if callable(details_fn) else str(exc)
    cls = _BY_CODE.get(code, ParamschedError) if code is not None else ParamschedError
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        cls = _BY_FENCE_REASON.get(fence_reason(exc), cls)
    name = code.name if code is not None else "UNKNOWN"
    return cls(f"{what}: the paramsched server at {server} answered {name}: {details}",
               code=code)
