"""The background thread that talks to the server while the training loop runs.

The training thread never waits for a report's reply: its step hook stores the
iteration count and, when the plan runs low, ``kick``s this thread (it waits only
until the request is on the wire, handing over the GIL) and, while the reply is due,
lets it in now and then (``let_reply_in``). This thread wakes on a kick or
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
import time
from typing import Protocol

import grpc

from paramsched.api.v1 import scheduler_pb2

from ._rpc import Connection, Waiting
from .errors import from_rpc_error, is_retryable_report

log = logging.getLogger(__name__)

#: the longest a ``kick`` holds the training thread (normally it waits far less).
KICK_TIMEOUT = 0.005
#: while a refill is on the wire, the training thread releases the GIL for
#: ``YIELD_FOR`` seconds at most every ``YIELD_EVERY`` seconds (see ``let_reply_in``);
#: a long plan's reply is let in less often (``YIELD_EVERY_LONG``): it has time to
#: spare, and each hand-over costs the loop about 0.1 ms of wall time.
YIELD_EVERY = 0.001
YIELD_EVERY_LONG = 0.003
YIELD_FOR = 50e-6


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
        # Clear while a report is on the wire (set again once its plan is merged): a
        # training thread that outran its plan waits for that reply rather than
        # sending a second request behind it.
        self._idle = threading.Event()
        self._idle.set()
        # Set once the request a ``kick`` asked for is on the wire (or none was needed).
        self._sent = threading.Event()
        self._sent.set()
        self._yielded = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def wake(self) -> threading.Event:
        """Set by the training thread to ask for a report or a refill now."""
        return self._wake

    def start(self) -> None:
        self._thread.start()

    def kick(self, timeout: float = KICK_TIMEOUT) -> None:
        """Ask for a report now, and wait until it is on the wire.

        Setting ``wake`` alone is not enough for a fast loop: the woken thread needs the
        GIL, which a training thread that never blocks gives up only at the
        interpreter's switch interval (5 ms, hundreds of short iterations; longer on a
        busy CPU), and a refill then came after the plan ran out. Waiting on an event
        releases the GIL at once; the wait ends as soon as the request is sent (tens of
        microseconds), once per refill. A thread already busy with a report is not
        waited for: the next report goes out when that one is done.
        """
        if not self._idle.is_set() or not self._thread.is_alive():
            self._wake.set()
            return
        self._sent.clear()
        self._wake.set()
        self._sent.wait(timeout)

    def reset(self) -> None:
        """Forget what was reported (after a resume the count starts elsewhere)."""
        self._last_sent = None

    def let_reply_in(self, every: float = YIELD_EVERY) -> None:
        """Called by the training thread while it waits for a refill: give the reply
        the GIL.

        The reply of a sent refill is read on this thread, which needs the GIL for it
        (a few times: gRPC's events, decoding, merging). A loop that never blocks hands
        it over only at the switch interval each time, and on a busy or single CPU the
        reply then landed tens of milliseconds late, after the plan ran out. A short
        wait on the idle event releases it now, and ends early once the plan is merged;
        at most every ``every`` seconds, only while a refill is in flight.
        """
        if self._idle.is_set():
            return
        now = time.perf_counter()
        if now - self._yielded >= every:
            self._yielded = now
            self._idle.wait(YIELD_FOR)

    def report_progress(self, timeout: float | None = None) -> None:
        """Send the latest progress if the server needs it; raises ``grpc.RpcError``."""
        request = self._session.progress_request(self._last_sent)
        if request is None:
            self._sent.set()
            return
        self._idle.clear()
        self._sent.set()  # the RPC below releases the GIL as it sends
        try:
            response = self._conn.call_once(self._conn.stub.ReportProgress, request, timeout)
            self._last_sent = request.iteration
            self._session.merge_plan(response.plan)
        finally:
            self._idle.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait (the GIL released) until no report is in flight; False on timeout.
        Returns at once on this thread itself, which never waits for its own reply."""
        if threading.current_thread() is self._thread:
            return self._idle.is_set()
        return self._idle.wait(timeout)

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
                if is_retryable_report(exc):
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
            finally:
                self._sent.set()  # never leave a kick waiting for its timeout

    def _what(self) -> str:
        session = self._session
        return (f"job {session.job_id!r} (rank {getattr(session, 'rank', '?')}): reporting "
                f"progress at iteration {getattr(session, 'iteration', '?')}")

    def close(self, timeout: float) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
