"""The JobStore contract: the one place a job's authoritative state lives.

Every implementation MUST satisfy all of this (one contract test suite runs against
each, real Redis included):

* Every method that changes a job is a single atomic read-modify-write: concurrent
  callers (other coroutines, other server processes) never lose an update.
* A method that returned normally has made its change durable as far as the backend
  promises (embedded: fsync'ed file; Redis: AOF per its fsync policy, and confirmed by
  the replicas it waits for: a write they do not confirm MUST raise ``StoreUnavailable``,
  never return, since a failover could lose it).
* Records are returned as fresh objects; mutating one changes nothing stored.
* Backend failures (connection refused, timeout, server loading) raise
  ``StoreUnavailable``; nothing else from the backend leaks out.
* ``report`` refuses a generation other than the stored one with ``StaleGeneration``,
  another incarnation with ``IncarnationMismatch`` and a rank outside a known world
  size with ``RankOutOfRange``, and changes nothing then.
* A job's ``incarnation`` is fixed when the store creates its record (``create``, or
  ``load_state`` of an absent job) and never changes; a generation belongs to one run
  (``run_id``): a new run gets a new generation (``join``, ``load_state``).
* Progress per rank only moves forward (max of stored and reported); a decision for an
  epoch is written once (first writer wins); ``issued_until`` only grows.
* A job's changes are append-only within a generation; ``reschedule``
  appends one only if no plan was handed out for its first iteration
  (``issued_until <= from_iteration``), no rank reported holding a plan past it
  (``held_until <= from_iteration``) and no other change came in meanwhile.
* ``held_until`` (the highest plan end a rank reported holding, ``report``'s
  ``held_until``) only grows within a generation and is 0 in a new one (``load_state``,
  ``join`` of a new run): defence in depth for a store that lost an ``issued_until``.
* A job keeps at most one keyframe (``save_keyframe``), which only moves forward within
  an incarnation and generation and goes with the job on ``delete``.
* The audit trail of a job id outlives the job: ``delete`` keeps it (and appends the
  deletion entry); a job created again under the same id continues it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

Metrics = dict[str, float]
JsonObjects = list[dict[str, Any]]  # (the protocol's method named ``list`` shadows the builtin)


class StoreError(Exception):
    """Base class of the store's own errors."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached or did not answer in time."""


class JobNotFound(StoreError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r} does not exist")


class TooEarly(StoreError):
    """A change would alter values already handed out in a plan (``issued_until`` is
    ``max(issued_until, held_until)``: the plans handed out or held by a rank)."""

    def __init__(self, job_id: str, from_iteration: int, issued_until: int) -> None:
        self.job_id, self.from_iteration, self.issued_until = job_id, from_iteration, issued_until
        super().__init__(
            f"job {job_id!r}: values up to iteration {issued_until - 1} were already handed out; "
            f"the earliest iteration a change can take effect is {issued_until}, "
            f"not {from_iteration}"
        )


class ChangeConflict(StoreError):
    """Another change was applied after this one was computed; compute it again."""

    def __init__(self, job_id: str, expected: int, current: int) -> None:
        self.job_id, self.expected, self.current = job_id, expected, current
        super().__init__(f"job {job_id!r} has {current} changes, the change was computed "
                         f"against {expected}")


class IncarnationMismatch(StoreError):
    """The job was deleted and created again (or lost and recreated) since."""

    def __init__(self, job_id: str, given: str, current: str) -> None:
        self.job_id, self.given, self.current = job_id, given, current
        super().__init__(
            f"job {job_id!r} was deleted and created again: it is incarnation {current!r}, "
            f"not {given!r}"
        )


class RankOutOfRange(StoreError):
    def __init__(self, job_id: str, rank: int, world_size: int) -> None:
        self.job_id, self.rank, self.world_size = job_id, rank, world_size
        super().__init__(f"rank {rank} is outside the world size {world_size} of the run "
                         f"of job {job_id!r}")


class WorldSizeConflict(StoreError):
    def __init__(self, job_id: str, given: int, stored: int) -> None:
        self.job_id, self.given, self.stored = job_id, given, stored
        super().__init__(f"the run of job {job_id!r} has world size {stored}, not {given}; "
                         "the world size is fixed per run (a new run may change it)")


class StaleGeneration(StoreError):
    def __init__(self, job_id: str, given: int, current: int) -> None:
        self.job_id, self.given, self.current = job_id, given, current
        super().__init__(
            f"job {job_id!r} is at generation {current}; generation {given} is stale "
            "(the job was resumed from a checkpoint since)"
        )


def canonical_json(data: Any) -> str:
    """Stable JSON (sorted keys, no spaces): the stored form and the hash input.

    Non-finite numbers are written as the tokens ``NaN``, ``Infinity`` and
    ``-Infinity`` (Python's ``json`` reads them back): the one encoding of the few
    values that may be non-finite (validation metrics, a scheduler's ``end``); the
    service refuses them everywhere else before anything is stored.
    """
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True)


def content_hash(data: Any) -> str:
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


@dataclass
class JobState:
    """What every record of a job holds but its spec and changes: a full record
    (``JobRecord``) and a report's reply (``Reported``) alike."""

    job_id: str
    spec_hash: str
    generation: int = 1
    version: int = 1
    world_size: int = 0
    created_at: float = 0.0
    issued_until: int = 0
    progress: dict[int, int] = field(default_factory=dict)  # rank -> iterations done
    decisions: dict[int, Metrics | None] = field(default_factory=dict)  # epoch -> metrics
    resumed_from: str = ""  # what started this generation: "<state hash>:<run id>"
    num_changes: int = 0
    incarnation: str = ""  # fixed at creation ("" for jobs stored before incarnations)
    run_id: str = ""  # the run this generation belongs to
    # When a rank first reported the job's last iteration done (0: not finished); a new
    # generation or a change clears it. Finished jobs are deleted after a retention.
    finished_at: float = 0.0
    # The highest plan end a rank of this generation reported holding (``report``'s
    # ``held_until``): changes start at or after it even if ``issued_until`` was lost.
    held_until: int = 0

    @property
    def has_progress(self) -> bool:
        """Whether any rank completed an iteration or any epoch was decided."""
        return bool(self.decisions) or any(it > 0 for it in self.progress.values())


@dataclass
class JobRecord(JobState):
    """A job's authoritative state: ``spec`` is the canonical spec dict
    (``JobSpec.to_dict()``), ``changes`` the job's changes in order (``reschedule``)."""

    spec: dict[str, Any] = field(kw_only=True)
    changes: list[dict[str, Any]] = field(default_factory=list, kw_only=True)

    def copy(self) -> JobRecord:
        return replace(
            self,
            spec=json.loads(canonical_json(self.spec)),
            changes=json.loads(canonical_json(self.changes)),
            progress=dict(self.progress),
            decisions={k: (dict(v) if v is not None else None) for k, v in self.decisions.items()},
        )


@dataclass
class Reported(JobState):
    """``JobStore.report``'s reply: the job's state after the report, with only what the
    caller does not hold already. ``spec`` is the stored spec where its hash is not the
    caller's ``known_spec_hash`` (None: the caller's is current); ``changes`` the stored
    changes where there are not ``known_changes`` of them (None: the caller holds them
    all)."""

    spec: dict[str, Any] | None = field(default=None, kw_only=True)
    changes: list[dict[str, Any]] | None = field(default=None, kw_only=True)

    def record(self, spec: dict[str, Any], changes: list[dict[str, Any]]) -> JobRecord:
        """The full record, given the spec and changes the caller held (used where this
        reply has none of its own)."""
        fields = {name: getattr(self, name) for name in _STATE_FIELDS}
        return JobRecord(**fields, spec=self.spec if self.spec is not None else spec,
                         changes=self.changes if self.changes is not None else changes)


_STATE_FIELDS = tuple(f.name for f in fields(JobState))


@dataclass(frozen=True)
class Keyframe:
    """A job's stored replay states at ``iteration`` (canonical JSON in ``data``): the
    service continues from it instead of replaying from 0. Only a cache of values the
    record already determines, so it is written without waiting for replicas; it is
    valid only for the job's ``incarnation`` and ``generation``."""

    incarnation: str
    generation: int
    iteration: int
    data: str


class JobStore(Protocol):
    """Where jobs live. All methods are coroutines; see the module docstring."""

    async def create(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Store ``record`` unless the job exists. Returns (stored record, created)."""
        ...

    async def get(self, job_id: str) -> JobRecord | None:
        ...

    async def list(self, prefix: str = "", after: str = "", limit: int = 100) -> list[JobRecord]:
        """Jobs whose id starts with ``prefix`` and sorts after ``after``, by id."""
        ...

    async def delete(self, job_id: str, audit_entry: dict[str, Any] | None = None, *,
                     finished_before: float | None = None) -> bool:
        """Remove every key of the job but its audit trail, to which ``audit_entry`` is
        appended if the job existed. Returns whether it existed. With
        ``finished_before``, only a job whose ``finished_at`` is set and not later is
        removed (atomically: a job resumed meanwhile stays)."""
        ...

    async def count(self, prefix: str = "", limit: int = 1000) -> int:
        """How many jobs' ids start with ``prefix`` (at most ``limit`` are counted)."""
        ...

    async def reschedule(
        self,
        job_id: str,
        *,
        generation: int,
        expected_changes: int,
        change: dict[str, Any],
        audit_entry: dict[str, Any],
    ) -> JobRecord:
        """Append a change (and its audit entry), atomically.

        Raises JobNotFound; StaleGeneration; ChangeConflict when the job's number of
        changes is not ``expected_changes``; TooEarly when ``max(issued_until,
        held_until)`` is past ``change["from_iteration"]``. Bumps ``version``; returns
        the full record.
        """
        ...

    async def append_audit(self, job_id: str, entry: dict[str, Any]) -> None:
        """Append to a job id's audit trail (whether or not the job exists)."""
        ...

    async def audit(self, job_id: str) -> JsonObjects:
        """A job id's audit trail, oldest first."""
        ...

    async def report(
        self,
        job_id: str,
        *,
        generation: int,
        rank: int,
        iteration: int,
        decision: tuple[int, Metrics | None] | None = None,
        issue_until: int = 0,
        known_spec_hash: str = "",
        known_changes: int = -1,
        incarnation: str | None = None,
        finished_at: float = 0.0,
        held_until: int = 0,
        more_progress: Mapping[int, int] | None = None,
    ) -> Reported:
        """Record a rank's progress, atomically.

        Raises JobNotFound; StaleGeneration when ``generation`` is not the stored one;
        IncarnationMismatch when ``incarnation`` is given and not the stored one;
        RankOutOfRange when the stored world size is known and ``rank`` is not below it.
        Sets ``progress[rank] = max(stored, iteration)``; stores ``decision`` (epoch,
        metrics or None) unless that epoch already has one; raises ``issued_until`` to
        ``issue_until``; bumps ``version``. Returns the job after the change, without the
        spec when ``known_spec_hash`` equals the stored ``spec_hash`` and without the
        changes when ``known_changes`` equals the stored ``num_changes`` (``Reported``).
        ``finished_at`` (> 0) is stored unless the job has one already; ``join`` of a
        new run, ``load_state`` and ``reschedule`` clear it. ``held_until`` raises the
        job's ``held_until`` (the caller checked the claim).
        ``more_progress`` (rank -> iteration): other ranks of the same report, recorded in
        the same write like ``rank`` (a group commit of a job's concurrent reports); a
        rank of it outside the world size is ``RankOutOfRange`` too, and nothing changes.
        """
        ...

    async def join(
        self,
        job_id: str,
        *,
        run_id: str,
        world_size: int,
        rank: int,
        issue_until: int,
        audit_entry: dict[str, Any] | None = None,
    ) -> tuple[JobRecord, str]:
        """A rank of run ``run_id`` attaches to the existing job, atomically.

        Raises JobNotFound. Returns (record, outcome):

        * ``"joined"``: the job's run is ``run_id``. Raises WorldSizeConflict when both
          world sizes are known and differ; a stored 0 (unknown) takes ``world_size``.
          Then records the rank like ``report`` at iteration 0 with ``issue_until``.
        * ``"resume_required"``: another run's generation has progress (see
          ``JobRecord.has_progress``): nothing changes.
        * ``"new_run"``: another run's generation without progress: the job becomes
          ``run_id``'s, in generation + 1, with this run's world size, progress
          ``{rank: 0}``, ``issued_until`` raised to ``issue_until`` and ``audit_entry``
          appended.
        """
        ...

    async def load_state(
        self,
        job_id: str,
        *,
        spec: dict[str, Any],
        spec_hash: str,
        decisions: dict[int, Metrics | None],
        progress: dict[int, int],
        min_generation: int,
        state_hash: str,
        world_size: int,
        created_at: float,
        changes: JsonObjects | None = None,
        audit_entries: JsonObjects | None = None,
        audit_entry: dict[str, Any] | None = None,
        issue_until: int = 0,
        run_id: str = "",
        incarnation: str = "",
    ) -> tuple[JobRecord, bool]:
        """Resume a job from a checkpoint state, creating it (as ``incarnation``) if
        absent; an existing job keeps its incarnation. The job's run becomes ``run_id``.

        If the job's ``resumed_from`` already equals ``state_hash`` (another rank loaded
        the same checkpoint), nothing changes and (record, False) is returned. Otherwise
        spec, decisions and progress are replaced, ``issued_until`` becomes
        ``max(max(progress), issue_until)`` (the plan the caller hands out),
        ``resumed_from = state_hash``, and the generation
        becomes ``max(stored + 1, min_generation)`` (``min_generation`` for a new job);
        the changes become ``changes``; when the job id has no audit trail yet (a fresh
        store) it gets the checkpoint's ``audit_entries``; then ``audit_entry`` is
        appended; returns (record, True).
        """
        ...

    async def save_keyframe(self, job_id: str, keyframe: Keyframe) -> bool:
        """Keep ``keyframe`` as the job's, atomically, if the job exists with its
        incarnation and generation and no keyframe of them at this or a later iteration
        is kept; returns whether it was. ``delete`` removes it with the job."""
        ...

    async def keyframe(self, job_id: str) -> Keyframe | None:
        """The job's kept keyframe (of any incarnation or generation: the caller checks)."""
        ...

    async def close(self) -> None:
        ...
