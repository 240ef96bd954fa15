"""Typed, frozen results of the admin API: a job, its values, its history, a change.

Each is parsed once from the wire message at the boundary (``from_proto``) and then
passed around as is; no caller re-reads proto fields. Values are plain floats, one
``{param: value}`` dict per param group, exactly as the server computed them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from paramsched.api.v1 import scheduler_pb2 as pb

from .plan import decode_plan

GroupValues = tuple[dict[str, float], ...]
BoundsMap = Mapping[str, tuple[float | None, float | None]]


@dataclass(frozen=True, slots=True)
class RankProgress:
    rank: int
    iteration: int  # iterations this rank has completed


@dataclass(frozen=True, slots=True)
class JobInfo:
    """The server's record of a job (``Client.get_job``, ``Client.list_jobs``)."""

    job_id: str
    generation: int
    params: tuple[str, ...]
    num_groups: int
    max_iters: int
    epoch_length: int | None
    max_epochs: int | None  # None: an iteration-based job (max_iters)
    world_size: int | None  # None: unknown
    progress: tuple[RankProgress, ...]
    issued_until: int  # values below this iteration were handed out (the plan horizon)
    num_changes: int
    created_at: float  # unix seconds
    version: int
    momentum_via_betas: bool
    param_scheduler: Any  # the config the job was created with (parsed JSON)
    initial_values: tuple[dict[str, Any], ...]
    bounds: BoundsMap
    max_jump_factor: float | None
    incarnation: str = ""
    run_id: str = ""
    proto: pb.Job = field(default_factory=pb.Job, repr=False, compare=False)

    @classmethod
    def from_proto(cls, job: pb.Job) -> JobInfo:
        spec = job.spec
        try:
            config = json.loads(spec.param_scheduler_json) if spec.param_scheduler_json else []
        except ValueError:
            config = spec.param_scheduler_json
        groups = []
        for group in spec.initial_values:
            values: dict[str, Any] = dict(group.values)
            if group.betas:
                values["betas"] = tuple(group.betas)
            groups.append(values)
        bounds = {name: (b.min if b.HasField("min") else None, b.max if b.HasField("max") else None)
                  for name, b in sorted(spec.bounds.items())}
        return cls(
            job_id=job.job_id, generation=job.generation, params=tuple(job.params),
            num_groups=job.num_groups, max_iters=job.max_iters,
            epoch_length=job.epoch_length if job.HasField("epoch_length") else None,
            max_epochs=spec.max_epochs if spec.HasField("max_epochs") else None,
            world_size=job.world_size or None,
            progress=tuple(RankProgress(p.rank, p.iteration) for p in job.progress),
            issued_until=job.issued_until, num_changes=job.num_changes,
            created_at=job.created_at, version=job.version,
            momentum_via_betas=job.momentum_via_betas, param_scheduler=config,
            initial_values=tuple(groups), bounds=bounds,
            max_jump_factor=spec.max_jump_factor if spec.HasField("max_jump_factor") else None,
            incarnation=job.incarnation, run_id=job.run_id, proto=job)

    @property
    def furthest_iteration(self) -> int:
        """The furthest iteration any rank has reported (0 before any report)."""
        return max((p.iteration for p in self.progress), default=0)

    @property
    def finished(self) -> bool:
        """Every iteration's values were handed out: no change can take effect any more."""
        return self.issued_until > self.max_iters

    @property
    def epoch_based(self) -> bool:
        return self.max_epochs is not None


@dataclass(frozen=True, slots=True)
class Values:
    """Values for iterations ``start, start + stride, ...`` (below ``stop``):
    ``rows[i][g][param]`` is for iteration ``start + i * stride``; stride 1 (the
    default): consecutive iterations ``[start, stop)``."""

    start: int
    params: tuple[str, ...]
    num_groups: int
    rows: tuple[GroupValues, ...] = ()
    waits_for_epoch: int | None = None  # the rows stop early: a pending plateau decision
    generation: int = 0
    max_iters: int = 0
    stride: int = 1

    @classmethod
    def from_plan(cls, message: pb.Plan) -> Values:
        plan = decode_plan(message, max_iters=message.max_iters)
        # A plan's rows are in order whatever its stride: row i at offset i.
        rows = tuple(tuple(plan.group_values(t)) for t in range(plan.start, plan.stop))
        return cls(plan.start, plan.params, plan.num_groups, rows, plan.waits_for_epoch,
                   plan.generation, plan.max_iters, max(1, message.stride))

    @property
    def stop(self) -> int:
        """The iteration after the last row's stride: where the next rows would start."""
        return self.start + len(self.rows) * self.stride

    @property
    def iterations(self) -> range:
        """The iteration of each row."""
        return range(self.start, self.stop, self.stride)

    def __len__(self) -> int:
        return len(self.rows)

    def covers(self, iteration: int) -> bool:
        return (self.start <= iteration < self.stop
                and (iteration - self.start) % self.stride == 0)

    def at(self, iteration: int) -> GroupValues:
        """The values of one iteration, one dict per group (``KeyError`` if not covered)."""
        if not self.covers(iteration):
            every = f" every {self.stride}" if self.stride > 1 else ""
            raise KeyError(f"iteration {iteration} is not in [{self.start}, {self.stop})"
                           + every)
        return self.rows[(iteration - self.start) // self.stride]

    def series(self, param: str, group: int = 0, start: int | None = None,
               stop: int | None = None) -> tuple[list[int], list[float]]:
        """(iterations, values) of one param of one group, optionally cut to [start, stop)."""
        lo = self.start if start is None else start
        hi = self.stop if stop is None else stop
        picked = [(t, row) for t, row in zip(self.iterations, self.rows, strict=True)
                  if lo <= t < hi]
        return [t for t, _ in picked], [row[group][param] for _, row in picked]

    def joined(self, other: Values) -> Values:
        """These rows followed by ``other``'s (which must start at ``self.stop``, with
        the same stride)."""
        if not self.rows:
            return other
        if other.start != self.stop:
            raise ValueError(f"values from {other.start} do not continue {self.stop}")
        if other.rows and other.stride != self.stride:
            raise ValueError(f"values every {other.stride} iterations do not continue "
                             f"values every {self.stride}")
        return Values(self.start, self.params, self.num_groups, self.rows + other.rows,
                      other.waits_for_epoch, other.generation or self.generation,
                      other.max_iters or self.max_iters, self.stride)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of a job's audit trail: a change, a resume, a deletion."""

    time: float  # unix seconds
    principal: str  # the token's name ("anonymous" without auth)
    action: str  # reschedule, set, scale, hold, decay, rewarm, extend, resume, delete
    iteration: int  # the iteration it took effect at
    generation: int
    details: Any  # the change as sent, or what was loaded or deleted (parsed JSON)
    before: GroupValues  # per group, the values at ``iteration`` before ...
    after: GroupValues  # ... and after
    reason: str

    @classmethod
    def from_proto(cls, entry: pb.AuditEntry) -> AuditEntry:
        try:
            details = json.loads(entry.details_json) if entry.details_json else None
        except ValueError:
            details = entry.details_json
        return cls(entry.time, entry.principal, entry.action, entry.iteration, entry.generation,
                   details, tuple(dict(v.values) for v in entry.before),
                   tuple(dict(v.values) for v in entry.after), entry.reason)


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """What a change did (or, with ``dry_run``, would do).

    ``before`` and ``after`` are the values from ``from_iteration`` on without and with
    the change; ``until`` is the last iteration the change shapes (``decay`` reaches its
    target there), within the job; ``warnings`` say where a change does not do what it
    asked (it runs past the end of training, so a decay never reaches its target).
    """

    job_id: str
    action: str
    applied: bool
    from_iteration: int
    until: int
    job: JobInfo
    before: Values
    after: Values
    entry: AuditEntry
    warnings: tuple[str, ...] = ()

    @property
    def dry_run(self) -> bool:
        return not self.applied

    def values_at(self, iteration: int) -> tuple[GroupValues, GroupValues]:
        """(before, after) at ``iteration``: from the previews, else from the entry."""
        before = self.before.at(iteration) if self.before.covers(iteration) else ()
        after = self.after.at(iteration) if self.after.covers(iteration) else ()
        if iteration == self.from_iteration:
            before = before or self.entry.before
            after = after or self.entry.after
        return before, after


def group_values(groups: Sequence[Mapping[str, float]]) -> GroupValues:
    return tuple(dict(g) for g in groups)
