"""Domain errors of the service; the gRPC layer maps each to one status code."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class; ``code`` names the gRPC status the front end uses."""

    code = "internal"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields (``field``, ``budget``) survive pickling, so an error
        # raised in a worker process (previews) reaches the caller as raised.
        return (_rebuilt, (type(self), str(self), dict(self.__dict__)))


def _rebuilt(cls: type[ServiceError], message: str, state: dict[str, Any]) -> ServiceError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class InvalidArgument(ServiceError):
    code = "invalid_argument"

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"invalid {field}: {message}")


class NotFound(ServiceError):
    code = "not_found"


class AlreadyExists(ServiceError):
    code = "already_exists"


class OutOfRange(InvalidArgument):
    """An argument outside what the job's current state allows (a change that would
    start before the iteration values were already handed out for)."""

    code = "out_of_range"


class FailedPrecondition(ServiceError):
    """This rank is fenced: it must stop (and its client says so). ``reason`` tells the
    client why, in one word: ``generation`` (resumed or restarted since), ``incarnation``
    (deleted and created again), ``lost`` (the job is gone from the store)."""

    code = "failed_precondition"

    def __init__(self, message: str, *, reason: str = "generation") -> None:
        self.reason = reason
        super().__init__(message)


class Aborted(ServiceError):
    """The job changed while the request was being served; the same request may succeed
    when retried (clients retry it with backoff)."""

    code = "aborted"


class PermissionDenied(ServiceError):
    code = "permission_denied"


class Unavailable(ServiceError):
    code = "unavailable"


class ResourceExhausted(ServiceError):
    """The request would cost more than a server budget allows; ``budget`` names the
    budget (a server option) and the message says what to ask instead."""

    code = "resource_exhausted"

    def __init__(self, message: str, *, budget: str) -> None:
        self.budget = budget
        super().__init__(message)


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed before the work was done; the work stopped there."""

    code = "deadline_exceeded"
