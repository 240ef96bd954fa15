"""Domain errors of the service; the gRPC layer maps each to one status code."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class; ``code`` names the gRPC status the front end uses."""

    code = "internal"


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


class FailedPrecondition(ServiceError):
    code = "failed_precondition"


class Unavailable(ServiceError):
    code = "unavailable"
