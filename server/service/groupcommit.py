"""Group commit: a job's concurrent progress reports, recorded in one store write.

Every rank of a job reports the same iterations at about the same time, and each report
costs a store write (a script on Redis, a transaction on the embedded store) that is
most of a report's cost. A report of a job with no write in flight goes out at once, so
a lone report waits for nothing; reports arriving while one is in flight wait for it and
then go out together, as one write: each rank's iteration, and the highest
``issue_until``, ``held_until`` and ``finished_at`` of them (each only grows in the
store, so the merged write records what the separate ones would have). Reports that
differ in what the store checks (generation, incarnation, the spec and changes the
server holds) or that carry a decision go in writes of their own.

The commit delay (as PostgreSQL's ``commit_delay``): a batch that has waited for the
write before it goes out once every rank of the job is in it or in that write (nobody
else is to be waited for), or ``delay`` seconds after its first report arrived,
whichever comes first. gRPC starts about one RPC per turn of
the event loop, so a job's reports trickle in; without the delay a batch holds the two
or three that came during one write, and every write costs the server as much Python
as a whole report. A lone report, and the first report after an idle spell, never wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from ..store.base import JobStore, Metrics, RankOutOfRange, Reported

# What a write checks in the store, so reports that agree on it can share one write.
Key: TypeAlias = tuple[str, int, str | None, str, int]

#: The default commit delay, in seconds (``paramsched serve --commit-delay``).
DEFAULT_COMMIT_DELAY = 0.001


@dataclass
class _Report:
    rank: int
    iteration: int
    issue_until: int
    held_until: int
    finished_at: float
    future: asyncio.Future[Reported]


@dataclass
class _Lane:
    """One key's writes: while it exists, a write is in flight or a batch is about to
    go, and new reports of the key wait in ``waiting``."""

    loop: asyncio.AbstractEventLoop  # the event loop of its writes
    waiting: list[_Report] = field(default_factory=list)
    first: float = 0.0  # when the first of ``waiting`` arrived (loop time)
    written: set[int] = field(default_factory=set)  # the ranks of the last write
    world_size: int = 0  # the job's, from its last write (0: not known)
    timer: asyncio.TimerHandle | None = None  # the delayed send of ``waiting``

    def add(self, report: _Report, now: float) -> None:
        if not self.waiting:
            self.first = now
        self.waiting.append(report)

    def complete(self) -> bool:
        """Every rank of the job is waiting or was in the last write: no other report
        is on its way."""
        return 0 < self.world_size <= len(
            self.written.union(report.rank for report in self.waiting))

    def take(self) -> list[_Report]:
        reports, self.waiting = self.waiting, []
        return reports

    def wrote(self, record: Reported, ranks: Iterable[int]) -> None:
        self.world_size = record.world_size
        self.written = set(ranks)


class GroupCommit:
    """``JobStore.report`` for many concurrent callers, a write per job at a time."""

    def __init__(self, store: JobStore, *, delay: float = DEFAULT_COMMIT_DELAY) -> None:
        if delay < 0:
            raise ValueError(f"the commit delay must be >= 0 seconds, got {delay}")
        self.store = store
        self.delay = delay
        self._lanes: dict[Key, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def report(self, job_id: str, *, generation: int, rank: int, iteration: int,
                     issue_until: int, known_spec_hash: str, known_changes: int,
                     incarnation: str | None, finished_at: float, held_until: int,
                     decision: tuple[int, Metrics | None] | None = None) -> Reported:
        """The record after this rank's report is stored (alone or with others). The
        record may be shared with the other callers of its write: do not change it."""
        if decision is not None:  # (rare: once per epoch; its write goes alone)
            return await self.store.report(
                job_id, generation=generation, rank=rank, iteration=iteration,
                decision=decision, issue_until=issue_until, known_spec_hash=known_spec_hash,
                known_changes=known_changes, incarnation=incarnation,
                finished_at=finished_at, held_until=held_until)
        key: Key = (job_id, generation, incarnation, known_spec_hash, known_changes)
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(key)
        if lane is not None and lane.loop is not loop:
            lane = None  # (left by a closed event loop: its write will never come back)
        if lane is not None:
            future: asyncio.Future[Reported] = loop.create_future()
            lane.add(_Report(rank, iteration, issue_until, held_until, finished_at, future),
                     loop.time())
            if lane.timer is not None and lane.complete():  # (the last one it waited for)
                lane.timer.cancel()
                self._start(key, lane)
            return await future
        lane = self._lanes[key] = _Lane(loop=loop)
        try:
            record = await self._write(key, {rank: iteration}, issue_until, held_until,
                                       finished_at)
            lane.wrote(record, (rank,))
            return record
        finally:
            self._next(key, lane)

    def _next(self, key: Key, lane: _Lane) -> None:
        """The write of ``key`` came back: send the reports that waited for it, now or
        when the commit delay of the first of them is over."""
        if not lane.waiting:
            if self._lanes.get(key) is lane:
                del self._lanes[key]
            return
        if self.delay == 0 or lane.complete():
            self._start(key, lane)
            return
        loop = asyncio.get_running_loop()
        lane.timer = loop.call_at(lane.first + self.delay, self._start, key, lane)

    def _start(self, key: Key, lane: _Lane) -> None:
        lane.timer = None
        task = asyncio.get_running_loop().create_task(self._send(key, lane, lane.take()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, key: Key, lane: _Lane, reports: list[_Report]) -> None:
        progress: dict[int, int] = {}
        for report in reports:
            progress[report.rank] = max(report.iteration, progress.get(report.rank, 0))
        try:
            try:
                record = await self._write(
                    key, progress, max(r.issue_until for r in reports),
                    max(r.held_until for r in reports), max(r.finished_at for r in reports))
            except RankOutOfRange:
                if len(progress) == 1:
                    raise
                # A rank is outside the world size: the others' reports stand; each goes
                # on its own, so only that rank is refused.
                await asyncio.gather(*(self._alone(key, report) for report in reports))
                return
            lane.wrote(record, progress)
            for report in reports:
                if not report.future.done():  # (a caller that gave up)
                    report.future.set_result(record)
        except BaseException as exc:
            for report in reports:
                if not report.future.done():
                    report.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._next(key, lane)

    async def _alone(self, key: Key, report: _Report) -> None:
        try:
            record = await self._write(key, {report.rank: report.iteration},
                                       report.issue_until, report.held_until,
                                       report.finished_at)
        except Exception as exc:
            if not report.future.done():
                report.future.set_exception(exc)
        else:
            if not report.future.done():
                report.future.set_result(record)

    async def _write(self, key: Key, progress: dict[int, int], issue_until: int,
                     held_until: int, finished_at: float) -> Reported:
        job_id, generation, incarnation, known_spec_hash, known_changes = key
        (rank, iteration), *more = progress.items()
        return await self.store.report(
            job_id, generation=generation, rank=rank, iteration=iteration,
            issue_until=issue_until, known_spec_hash=known_spec_hash,
            known_changes=known_changes, incarnation=incarnation, finished_at=finished_at,
            held_until=held_until, more_progress=dict(more) or None)
