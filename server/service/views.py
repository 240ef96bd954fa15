"""What the service hands out: plans, job views, change results; its observer hook."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..schedules import (
    GroupValues,
    JobSpec,
)
from ..schedules.reschedule import Schedule
from ..store import (
    JobRecord,
)


class ServiceEvents(Protocol):
    """What the service tells observers (metrics); every method must be cheap."""

    def plan_issued(self, job_id: str, iterations: int) -> None: ...

    def job_reported(self, job_id: str) -> None: ...

    def report_fenced(self, job_id: str) -> None: ...


class NoEvents:
    def plan_issued(self, job_id: str, iterations: int) -> None:
        pass

    def job_reported(self, job_id: str) -> None:
        pass

    def report_fenced(self, job_id: str) -> None:
        pass


@dataclass(frozen=True)
class Plan:
    """Values for iterations ``start .. start+len(values)-1`` of one generation."""

    start: int
    params: tuple[str, ...]
    num_groups: int
    values: list[GroupValues]
    generation: int
    waits_for_epoch: int | None = None
    max_iters: int = 0  # the job's length as of this plan (changes may alter it)
    incarnation: str = ""
    # The server's signature of this plan's end (signing.sign_horizon; "" without state
    # keys): a rank reports it back with held_until, so no change starts inside the plan.
    horizon_token: str = ""

    @property
    def cells(self) -> int:
        """How many values the plan holds (iterations x groups x params)."""
        return len(self.values) * self.num_groups * len(self.params)


def plan_of(spec: JobSpec, schedule: Schedule, start: int, stop: int,
            values: list[GroupValues], generation: int, incarnation: str = "") -> Plan:
    """A plan; when it stops short of ``stop``, it says which epoch's decision it waits on."""
    waits: int | None = None
    if start + len(values) < stop:  # the decision due where the values stop
        waits = spec.decision_at(start + len(values))
    return Plan(start, schedule.params, spec.num_groups, values, generation, waits,
                schedule.max_iters, incarnation)


@dataclass(frozen=True)
class RescheduleResult:
    view: JobView
    from_iteration: int
    before: Plan
    after: Plan
    applied: bool
    audit: dict[str, Any]
    before_at: list[dict[str, float]]  # per group: the changed params' values at s, before
    after_at: list[dict[str, float]]  # ... and after


@dataclass(frozen=True)
class JobView:
    record: JobRecord
    spec: JobSpec
    max_iters: int  # after changes that extend or shorten training
    params: tuple[str, ...]  # scheduled params, changes included

    @classmethod
    def of(cls, record: JobRecord, entry: LoadedJob) -> JobView:
        schedule = entry.schedule
        return cls(record, entry.spec, schedule.max_iters, schedule.params)


@dataclass(frozen=True)
class Attachment:
    """What a rank gets from ``attach``: the job, and values from iteration 0 unless the
    job has progress from another run (``resume_required``: ``plan`` is empty)."""

    view: JobView
    created: bool
    plan: Plan
    resume_required: bool = False


@dataclass
class LoadedJob:
    """A job as this process caches it: parsed spec, schedule, and its lock. Keyed by
    everything its values depend on: incarnation, spec, generation and changes."""

    incarnation: str
    spec_hash: str
    generation: int
    num_changes: int
    spec: JobSpec
    schedule: Schedule
    changes: list[dict[str, Any]]
    # Held while the schedule's caches are read or extended (inline or in a thread).
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The stored keyframe was read (``warmed``; under ``warming``, once per entry), and
    # the iteration of the latest keyframe this process knows is stored (0: none; the
    # initial state is every schedule's own, so a keyframe at 0 is never stored).
    warmed: bool = False
    warming: asyncio.Lock = field(default_factory=asyncio.Lock)
    durable: int = 0
    # The highest ``issued_until`` this process saw: reports far past it are refused.
    frontier: int = 0
    frontier_read: float = -1e9  # when ``frontier`` was last read from the store
    # The schedule's memory as the job cache last counted it (``Schedule.nbytes``).
    nbytes: int = 0
