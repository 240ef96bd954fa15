"""The JobStore contract: the one place a job's authoritative state lives.

Every implementation MUST satisfy all of this (one contract test suite runs against
each, real Redis included):

* Every method that changes a job is a single atomic read-modify-write: concurrent
  callers (other coroutines, other server processes) never lose an update.
* A method that returned normally has made its change durable as far as the backend
  promises (embedded: fsync'ed file; Redis: AOF per its fsync policy).
* Records are returned as fresh objects; mutating one changes nothing stored.
* Backend failures (connection refused, timeout, server loading) raise
  ``StoreUnavailable``; nothing else from the backend leaks out.
* ``report`` refuses a generation other than the stored one with ``StaleGeneration``
  and changes nothing then.
* Progress per rank only moves forward (max of stored and reported); a decision for an
  epoch is written once (first writer wins); ``issued_until`` only grows.
* A job's changes (``overrides``) are append-only within a generation; ``reschedule``
  appends one only if no plan was handed out for its first iteration
  (``issued_until <= from_iteration``) and no other change came in meanwhile.
* The audit trail of a job id outlives the job: ``delete`` keeps it (and appends the
  deletion entry); a job created again under the same id continues it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
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
    """A change would alter values already handed out in a plan."""

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


class StaleGeneration(StoreError):
    def __init__(self, job_id: str, given: int, current: int) -> None:
        self.job_id, self.given, self.current = job_id, given, current
        super().__init__(
            f"job {job_id!r} is at generation {current}; generation {given} is stale "
            "(the job was resumed from a checkpoint since)"
        )


def canonical_json(data: Any) -> str:
    """Stable JSON (sorted keys, no spaces): the stored form and the hash input."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_hash(data: Any) -> str:
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


@dataclass
class JobRecord:
    """A job's authoritative state.

    ``spec`` is the canonical spec dict (``JobSpec.to_dict()``); it may be ``None`` in a
    ``report`` reply when the caller said it already holds the spec with ``spec_hash``.
    ``overrides`` are the job's changes, in order (``reschedule``); ``None`` in a
    ``report`` reply when the caller said it already holds all ``num_changes`` of them.
    """

    job_id: str
    spec: dict[str, Any] | None
    spec_hash: str
    generation: int = 1
    version: int = 1
    world_size: int = 0
    created_at: float = 0.0
    issued_until: int = 0
    progress: dict[int, int] = field(default_factory=dict)  # rank -> iterations done
    decisions: dict[int, Metrics | None] = field(default_factory=dict)  # epoch -> metrics
    resumed_from: str = ""  # hash of the last checkpoint state loaded into this job
    overrides: list[dict[str, Any]] | None = field(default_factory=list)
    num_changes: int = 0

    def copy(self) -> JobRecord:
        return replace(
            self,
            spec=json.loads(canonical_json(self.spec)) if self.spec is not None else None,
            overrides=(json.loads(canonical_json(self.overrides))
                       if self.overrides is not None else None),
            progress=dict(self.progress),
            decisions={k: (dict(v) if v is not None else None) for k, v in self.decisions.items()},
        )


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

    async def delete(self, job_id: str, audit_entry: dict[str, Any] | None = None) -> bool:
        """Remove every key of the job but its audit trail, to which ``audit_entry`` is
        appended if the job existed. Returns whether it existed."""
        ...

    async def reschedule(
        self,
        job_id: str,
        *,
        generation: int,
        expected_changes: int,
        override: dict[str, Any],
        audit_entry: dict[str, Any],
    ) -> JobRecord:
        """Append a change (and its audit entry), atomically.

        Raises JobNotFound; StaleGeneration; ChangeConflict when the job's number of
        changes is not ``expected_changes``; TooEarly when ``issued_until`` is past
        ``override["from_iteration"]``. Bumps ``version``; returns the full record.
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
    ) -> JobRecord:
        """Record a rank's progress, atomically.

        Raises JobNotFound, or StaleGeneration when ``generation`` is not the stored one.
        Sets ``progress[rank] = max(stored, iteration)``; stores ``decision`` (epoch,
        metrics or None) unless that epoch already has one; raises ``issued_until`` to
        ``issue_until``; bumps ``version``. Returns the record after the change, with
        ``spec=None`` when ``known_spec_hash`` equals the stored ``spec_hash`` and
        ``overrides=None`` when ``known_changes`` equals the stored ``num_changes``.
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
        overrides: JsonObjects | None = None,
        audit_entries: JsonObjects | None = None,
        audit_entry: dict[str, Any] | None = None,
        issue_until: int = 0,
    ) -> tuple[JobRecord, bool]:
        """Resume a job from a checkpoint state, creating it if absent.

        If the job's ``resumed_from`` already equals ``state_hash`` (another rank loaded
        the same checkpoint), nothing changes and (record, False) is returned. Otherwise
        spec, decisions and progress are replaced, ``issued_until`` becomes
        ``max(max(progress), issue_until)`` (the plan the caller hands out),
        ``resumed_from = state_hash``, and the generation
        becomes ``max(stored + 1, min_generation)`` (``min_generation`` for a new job);
        the changes become ``overrides``; when the job id has no audit trail yet (a fresh
        store) it gets the checkpoint's ``audit_entries``; then ``audit_entry`` is
        appended; returns (record, True).
        """
        ...

    async def close(self) -> None:
        ...
