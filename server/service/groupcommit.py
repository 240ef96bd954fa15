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
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TypeAlias

from ..store.base import JobRecord, JobStore, Metrics, RankOutOfRange

# What a write checks in the store, so reports that agree on it can share one write.
Key: TypeAlias = tuple[str, int, str | None, str, int]


@dataclass
class _Report:
    rank: int
    iteration: int
    issue_until: int
    held_until: int
    finished_at: float
    future: asyncio.Future[JobRecord]


@dataclass
class _Waiting:
    """Reports of one key that wait for the write in flight."""

    reports: list[_Report] = field(default_factory=list)

    def add(self, rank: int, iteration: int, issue_until: int, held_until: int,
            finished_at: float) -> asyncio.Future[JobRecord]:
        future: asyncio.Future[JobRecord] = asyncio.get_running_loop().create_future()
        self.reports.append(_Report(rank, iteration, issue_until, held_until, finished_at,
                                    future))
        return future


class GroupCommit:
    """``JobStore.report`` for many concurrent callers, a write per job at a time."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._busy: set[Key] = set()  # keys with a write in flight
        self._waiting: dict[Key, _Waiting] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def report(self, job_id: str, *, generation: int, rank: int, iteration: int,
                     issue_until: int, known_spec_hash: str, known_changes: int,
                     incarnation: str | None, finished_at: float, held_until: int,
                     decision: tuple[int, Metrics | None] | None = None) -> JobRecord:
        """The record after this rank's report is stored (alone or with others). The
        record may be shared with the other callers of its write: do not change it."""
        if decision is not None:  # (rare: once per epoch; its write goes alone)
            return await self.store.report(
                job_id, generation=generation, rank=rank, iteration=iteration,
                decision=decision, issue_until=issue_until, known_spec_hash=known_spec_hash,
                known_changes=known_changes, incarnation=incarnation,
                finished_at=finished_at, held_until=held_until)
        key: Key = (job_id, generation, incarnation, known_spec_hash, known_changes)
        if key in self._busy:
            waiting = self._waiting.setdefault(key, _Waiting())
            return await waiting.add(rank, iteration, issue_until, held_until, finished_at)
        self._busy.add(key)
        try:
            return await self._write(key, {rank: iteration}, issue_until, held_until,
                                     finished_at)
        finally:
            self._next(key)

    def _next(self, key: Key) -> None:
        """The write of ``key`` came back: send the reports that waited for it."""
        waiting = self._waiting.pop(key, None)
        if waiting is None:
            self._busy.discard(key)
            return
        task = asyncio.get_running_loop().create_task(self._send(key, waiting))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, key: Key, waiting: _Waiting) -> None:
        reports = waiting.reports
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
            self._next(key)

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
                     held_until: int, finished_at: float) -> JobRecord:
        job_id, generation, incarnation, known_spec_hash, known_changes = key
        (rank, iteration), *more = progress.items()
        return await self.store.report(
            job_id, generation=generation, rank=rank, iteration=iteration,
            issue_until=issue_until, known_spec_hash=known_spec_hash,
            known_changes=known_changes, incarnation=incarnation, finished_at=finished_at,
            held_until=held_until, more_progress=dict(more) or None)
