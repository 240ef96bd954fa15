"""One gRPC channel to the scheduler service, with retry and backoff.

Transport failures (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED) are retried with
exponential backoff and jitter, so a server restart or a short network cut costs a
training job nothing but a delay; every other status becomes a client error at once.
The channel's own reconnect backoff is capped low, because gRPC's default (up to two
minutes) would keep a rank waiting long after a restarted server is back.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from paramsched.api.v1 import scheduler_pb2_grpc

from .errors import ScheduleUnavailableError, from_rpc_error, is_retryable

Response = TypeVar("Response")

_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
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

    def backoff(self) -> Backoff:
        return Backoff(self.backoff_initial, self.backoff_max)

    def call_once(
        self, method: Callable[..., Response], request: Any, timeout: float | None = None
    ) -> Response:
        """One attempt; raises ``grpc.RpcError`` unchanged (callers decide on retries)."""
        return method(request, timeout=self.timeout if timeout is None else timeout,
                      metadata=self.metadata)

    def call(
        self,
        method: Callable[..., Response],
        request: Any,
        *,
        what: str,
        wait: float,
        stop: threading.Event | None = None,
    ) -> Response:
        """Call ``method``, retrying transport failures for up to ``wait`` seconds.

        ``what`` says what the call was for ("attach job 'x'"); it starts every error
        message. Non-retryable statuses raise the matching ``ParamschedError`` at once.
        """
        backoff = self.backoff()
        start = time.monotonic()
        deadline = start + wait
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self.call_once(method, request, max(0.05, min(self.timeout, remaining)))
            except grpc.RpcError as exc:
                if not is_retryable(exc):
                    raise from_rpc_error(exc, what, server=self.target) from None
                last = exc
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
            code = last.code() if callable(getattr(last, "code", None)) else None
            details = last.details() if callable(getattr(last, "details", None)) else ""
            cause = f" (last error: {code.name if code else 'UNKNOWN'}: {details})"
        elif last is not None:
            cause = f" (last error: {last})"
        return ScheduleUnavailableError(
            f"{what}: no answer from the paramsched server at {self.target} "
            f"after waiting {waited:.1f}s{extra}{cause}",
            code=grpc.StatusCode.UNAVAILABLE,
        )

    def close(self) -> None:
        self.channel.close()
