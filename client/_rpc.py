"""One gRPC channel to the scheduler service, with retry, backoff and waiting logs.

Transport failures (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED) are retried with
exponential backoff and jitter, so a server restart or a short network cut costs a
training job nothing but a delay; every other status becomes a client error at once.
The channel's own reconnect backoff is capped low, because gRPC's default (up to two
minutes) would keep a rank waiting long after a restarted server is back.

Waiting is never silent: a call that has waited ``WARN_AFTER`` seconds logs a WARNING
naming the server and what it waits for (the job, the rank, the iteration), then again
every ``WARN_EVERY`` seconds. A connection refused before this client ever reached
the server is most often a wrong address or a server not started yet: admin calls
(``fail_fast``) raise at once with a hint, and ``attach`` logs at once that it waits.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from paramsched.api.v1 import scheduler_pb2, scheduler_pb2_grpc

from .errors import ParamschedError, ScheduleUnavailableError, from_rpc_error, is_retryable

log = logging.getLogger("paramsched.client")

#: seconds of waiting before the first WARNING, and between the next ones.
WARN_AFTER = 3.0
WARN_EVERY = 30.0

#: what to do about a server that cannot be reached at all.
UNREACHABLE_HINT = (
    "is the server running there? Start one with `paramsched serve` (it prints the "
    "address it listens on), or point the client at the right one: Client(target), the "
    "CLI's --target HOST:PORT or the PARAMSCHED_TARGET environment variable")

#: (request type, status) -> what the user can do about it, appended to the message.
_HINTS: dict[tuple[type, grpc.StatusCode], str] = {
    (scheduler_pb2.AttachJobRequest, grpc.StatusCode.ALREADY_EXISTS):
        "to create the job afresh with this config, delete it first "
        "(`paramsched jobs delete JOB`, or client.delete_job(job_id)); or attach with a "
        "new job id, or without a config to join the job as it is",
}

Response = TypeVar("Response")

_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
    # Admin reads (GetValues of a long job, previews) may be large; plans are small.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)


class Backoff:
    """Exponential delays with jitter: ``initial * 2**n``, capped at ``maximum``."""

    def __init__(self, initial: float, maximum: float) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(f"need 0 < backoff_initial <= backoff_max, got {initial}, {maximum}")
        self.initial = initial
        self.maximum = maximum
        self._attempt = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * (2.0**self._attempt))
        self._attempt = min(self._attempt + 1, 62)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._attempt = 0


def connection_refused(exc: BaseException) -> bool:
    """Whether ``exc`` says nothing listens at the address (as opposed to a server that
    is slow, restarting or overloaded)."""
    if not isinstance(exc, grpc.RpcError) or _status(exc) != grpc.StatusCode.UNAVAILABLE:
        return False
    text = _details(exc).lower()
    return any(s in text for s in ("connection refused", "failed to connect",
                                   "name resolution", "dns resolution failed"))


def _status(exc: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    return code() if callable(code) else None


def _details(exc: grpc.RpcError) -> str:
    details = getattr(exc, "details", None)
    return str(details() if callable(details) else exc) or ""


def field_violations(exc: grpc.RpcError) -> tuple[tuple[str, str], ...]:
    """The ``google.rpc.BadRequest`` field violations the server attached, as
    ``(field, description)`` pairs (empty when there are none)."""
    trailing = getattr(exc, "trailing_metadata", None)
    metadata = (trailing() if callable(trailing) else None) or ()
    blob = next((v for k, v in metadata if k == "grpc-status-details-bin"), None)
    if not isinstance(blob, bytes):
        return ()
    try:
        from google.rpc import error_details_pb2, status_pb2

        status = status_pb2.Status.FromString(blob)
        out: list[tuple[str, str]] = []
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                out.extend((v.field, v.description) for v in bad.field_violations)
        return tuple(out)
    except Exception:  # details are an extra: a malformed blob must not hide the error
        return ()


def translate(exc: grpc.RpcError, what: str, *, server: str, request: Any = None
              ) -> ParamschedError:
    """``from_rpc_error`` plus what a caller can act on: ``error.details`` (the server's
    own words), ``error.field_violations`` (BadRequest details) and a hint, if any."""
    error = from_rpc_error(exc, what, server=server)
    code = _status(exc)
    hint = _HINTS.get((type(request), code)) if code is not None else None
    if hint:
        error.args = (f"{error.args[0]}; {hint}", *error.args[1:])
    setattr(error, "details", _details(exc))  # noqa: B010 - the class is errors.py's
    setattr(error, "hint", hint or "")  # noqa: B010
    setattr(error, "field_violations", field_violations(exc))  # noqa: B010
    return error


class Waiting:
    """Logs a WARNING once a wait has lasted ``WARN_AFTER`` seconds, then every
    ``WARN_EVERY``: which server, what for (job, rank, iteration), the last error."""

    def __init__(self, target: str, what: str | Callable[[], str],
                 limit: float | None = None) -> None:
        self.target = target
        self._what = what
        self.limit = limit
        self.start = time.monotonic()
        self._next = self.start + WARN_AFTER
        self._said_refused = False
        self.warned = False  # whether a WARNING was logged for this wait

    def failed(self, exc: BaseException | None, *, refused_at_start: bool = False,
               waits_for: str = "") -> None:
        """Record one failed attempt (``exc``: its error; None with ``waits_for``: the
        server answered, but what is waited for, e.g. "the validation decision of
        epoch 3", is not there yet)."""
        now = time.monotonic()
        if refused_at_start and not self._said_refused:
            self._said_refused = True
            self.warned = True
            log.warning("%s: nothing answers at %s yet (connection refused); waiting for "
                        "the paramsched server%s. %s", self.what, self.target,
                        self._for(), UNREACHABLE_HINT)
            self._next = now + WARN_EVERY
            return
        if now < self._next:
            return
        self._next = now + WARN_EVERY
        self.warned = True
        if exc is None and waits_for:
            log.warning("%s: still waiting after %.1fs for %s (server %s)%s", self.what,
                        now - self.start, waits_for, self.target, self._for())
            return
        cause = ""
        if isinstance(exc, grpc.RpcError):
            code = _status(exc)
            cause = f" (last error: {code.name if code else 'UNKNOWN'}: {_details(exc)})"
        elif exc is not None:
            cause = f" (last error: {exc})"
        log.warning("%s: still waiting for the paramsched server at %s after %.1fs%s%s",
                    self.what, self.target, now - self.start, self._for(), cause)

    @property
    def what(self) -> str:
        """What is waited for; a callable is asked each time (the iteration moves on)."""
        return self._what() if callable(self._what) else self._what

    def _for(self) -> str:
        return f" (for up to {self.limit:g}s)" if self.limit else ""


class Connection:
    """The stub plus the retry policy shared by every handle of one ``Client``."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float,
        backoff_initial: float,
        backoff_max: float,
        channel_options: Sequence[tuple[str, Any]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        Backoff(backoff_initial, backoff_max)  # validates
        self.target = target
        self.timeout = float(timeout)
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        options = list(_CHANNEL_OPTIONS) + list(channel_options)
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            self.channel = grpc.secure_channel(target, credentials, options=options)
        self.stub = scheduler_pb2_grpc.SchedulerServiceStub(self.channel)
        # Sent with every call (also on plaintext channels, which gRPC's call
        # credentials refuse); never logged or put in an error message.
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        #: whether any call ever got an answer from the server (a refused connection
        #: before that is most likely a wrong address; after it, a restart).
        self.reached = False

    def backoff(self) -> Backoff:
        return Backoff(self.backoff_initial, self.backoff_max)

    def call_once(
        self, method: Callable[..., Response], request: Any, timeout: float | None = None
    ) -> Response:
        """One attempt; raises ``grpc.RpcError`` unchanged (callers decide on retries)."""
        try:
            response = method(request, timeout=self.timeout if timeout is None else timeout,
                              metadata=self.metadata)
        except grpc.RpcError as exc:
            if _status(exc) != grpc.StatusCode.UNAVAILABLE:
                self.reached = True  # the server answered, with an error
            raise
        self.reached = True
        return response

    def waiting(self, what: str | Callable[[], str], limit: float | None = None) -> Waiting:
        """A ``Waiting`` log for a wait of up to ``limit`` seconds for ``what``."""
        return Waiting(self.target, what, limit)

    def call(
        self,
        method: Callable[..., Response],
        request: Any,
        *,
        what: str,
        wait: float,
        stop: threading.Event | None = None,
        fail_fast: bool = False,
    ) -> Response:
        """Call ``method``, retrying transport failures for up to ``wait`` seconds.

        ``what`` says what the call was for ("attach job 'x'"); it starts every error
        message. Non-retryable statuses raise the matching ``ParamschedError`` at once.
        With ``fail_fast``, a refused connection to a server this client never reached
        raises at once, with a hint; without it, the wait is logged at once.
        """
        backoff = self.backoff()
        start = time.monotonic()
        deadline = start + wait
        waiting = self.waiting(what, wait)
        while True:
            remaining = deadline - time.monotonic()
            never_reached = not self.reached
            try:
                return self.call_once(method, request, max(0.05, min(self.timeout, remaining)))
            except grpc.RpcError as exc:
                if not is_retryable(exc):
                    raise translate(exc, what, server=self.target, request=request) from None
                last = exc
            refused = never_reached and connection_refused(last)
            if refused and fail_fast:
                raise self.unavailable(what, time.monotonic() - start, last)
            waiting.failed(last, refused_at_start=refused)
            delay = backoff.next_delay()
            if time.monotonic() + delay > deadline:
                raise self.unavailable(what, time.monotonic() - start, last)
            if stop is not None:
                if stop.wait(delay):
                    raise self.unavailable(what, time.monotonic() - start, last)
            else:
                time.sleep(delay)

    def unavailable(
        self, what: str, waited: float, last: BaseException | None, extra: str = ""
    ) -> ScheduleUnavailableError:
        """The error for "gave up": which server, what for, how long, the last failure."""
        cause = ""
        if isinstance(last, grpc.RpcError):
            code = _status(last)
            cause = f" (last error: {code.name if code else 'UNKNOWN'}: {_details(last)})"
        elif last is not None:
            cause = f" (last error: {last})"
        hint = ""
        if isinstance(last, grpc.RpcError) and connection_refused(last):
            hint = f"; {UNREACHABLE_HINT}"
        error = ScheduleUnavailableError(
            f"{what}: no answer from the paramsched server at {self.target} "
            f"after waiting {waited:.1f}s{extra}{cause}{hint}",
            code=grpc.StatusCode.UNAVAILABLE,
        )
        setattr(error, "details",  # noqa: B010 - the class is errors.py's
                f"cannot reach the paramsched server at {self.target}{cause}")
        setattr(error, "hint", hint[2:])  # noqa: B010
        setattr(error, "field_violations", ())  # noqa: B010
        return error

    def close(self) -> None:
        self.channel.close()
