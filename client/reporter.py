"""The background thread that talks to the server while the training loop runs.

The training thread never waits for a report: its step hook stores the iteration
count and, when the plan runs low, sets an event. This thread wakes on that event or
every ``report_interval`` seconds and sends one progress report for the latest
iteration whenever it changed or a refill is due (reports coalesce: only the newest
count matters), then hands the plan in the reply to the handle.

Epoch ends and validation points do not come through here: one that a decision waits
on is sent by ``end_epoch`` / ``record_validation`` itself (the caller needs the values
it unlocks), and one that nobody waits on needs no message at all (the iteration count
says where epochs end and validation points are).

Transport failures are retried with backoff for as long as the handle lives; the
loop keeps running on its plan meanwhile, and a WARNING names the server, the job and
the iteration once the server has been unreachable for a few seconds (then at
intervals, and once more when it answers again). Any other failure is handed to the handle,
which raises it in the training thread at the next ``optimizer.step()``.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import grpc

from paramsched.api.v1 import scheduler_pb2

from ._rpc import Connection, Waiting
from .errors import from_rpc_error, is_retryable

log = logging.getLogger(__name__)


class Session(Protocol):
    """What the reporter needs from a ``ScheduleHandle``."""

    job_id: str
    rank: int

    @property
    def generation(self) -> int: ...

    @property
    def iteration(self) -> int: ...

    def progress_request(self, last_sent: int | None) -> scheduler_pb2.ReportProgressRequest | None:
        """The report to send now, or None when the server knows ``last_sent`` and no
        refill is due."""
        ...

    def merge_plan(self, plan: scheduler_pb2.Plan) -> None: ...

    def fail(self, error: BaseException, generation: int) -> None: ...


class Reporter:
    """One daemon thread per attached handle."""

    def __init__(
        self, connection: Connection, session: Session, interval: float, name: str
    ) -> None:
        self._conn = connection
        self._session = session
        self._interval = interval
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._last_sent: int | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def wake(self) -> threading.Event:
        """Set by the training thread to ask for a report or a refill now."""
        return self._wake

    def start(self) -> None:
        self._thread.start()

    def reset(self) -> None:
        """Forget what was reported (after a resume the count starts elsewhere)."""
        self._last_sent = None

    def report_progress(self, timeout: float | None = None) -> None:
        """Send the latest progress if the server needs it; raises ``grpc.RpcError``."""
        request = self._session.progress_request(self._last_sent)
        if request is None:
            return
        response = self._conn.call_once(self._conn.stub.ReportProgress, request, timeout)
        self._last_sent = request.iteration
        self._session.merge_plan(response.plan)

    def _run(self) -> None:
        backoff = self._conn.backoff()
        waiting: Waiting | None = None
        while not self._closed.is_set():
            self._wake.wait(self._interval)
            if self._closed.is_set():
                return
            self._wake.clear()
            generation = self._session.generation
            try:
                self.report_progress()
                backoff.reset()
                if waiting is not None and waiting.warned:
                    log.warning("%s: the paramsched server at %s answers again",
                                waiting.what, self._conn.target)
                waiting = None
            except grpc.RpcError as exc:
                if is_retryable(exc):
                    log.debug(
                        "paramsched job %r: report failed, retrying: %s", self._session.job_id, exc
                    )
                    if waiting is None:
                        waiting = self._conn.waiting(self._what)
                    waiting.failed(exc)
                    if self._closed.wait(backoff.next_delay()):
                        return
                    self._wake.set()
                    continue
                what = f"reporting progress of job {self._session.job_id!r}"
                self._session.fail(from_rpc_error(exc, what, server=self._conn.target),
                                   generation)
            except Exception as exc:  # a bug or a malformed reply: surface it, never hide it
                self._session.fail(exc, generation)

    def _what(self) -> str:
        session = self._session
        return (f"job {session.job_id!r} (rank {getattr(session, 'rank', '?')}): reporting "
                f"progress at iteration {getattr(session, 'iteration', '?')}")

    def close(self, timeout: float) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
