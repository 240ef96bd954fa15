"""The embedded JobStore: one sqlite3 file, so ``paramsched serve`` alone is durable.

Why sqlite and how it keeps the contract of ``base.py``:

* The file ``paramsched.sqlite3`` lives in ``data_dir``. WAL mode plus
  ``synchronous=FULL`` means a committed transaction is fsync'ed before ``COMMIT``
  returns, so an acknowledged report survives a server kill or a power cut.
* Every method is ONE transaction. Methods that change a job start with
  ``BEGIN IMMEDIATE``: the write lock is taken before the first read, so a
  read-modify-write can never interleave with another writer -- whether that writer is
  another coroutine of this process or another server process on the same data dir.
  Pure reads use a deferred ``BEGIN``: in WAL mode that is a consistent snapshot and
  never waits for a writer.
* A writer that cannot get the lock within ``busy_timeout`` seconds, a full disk or
  an unreadable file raises ``StoreUnavailable``; other sqlite errors ``StoreError``.
* sqlite calls block, so they run in the store's own worker thread (not the shared
  pool, so a burst of long computations elsewhere cannot starve the store's I/O). One
  connection, under a ``threading.Lock``: sqlite serialises writers anyway, and one
  connection keeps the locking story trivial.
* Group commit: writes that arrive while a transaction is being committed wait, then
  commit together in ONE transaction (one fsync), each inside its own SAVEPOINT, so one
  write's refusal (``StaleGeneration``, say) undoes only that write. Every caller is
  answered after the commit that made its write durable, never before.

Files are private: the data dir is 0700 and the database files 0600 whatever the
umask (the store holds every job, past the tokens). A data dir that others may read
(a shared volume, a Kubernetes ``fsGroup`` mount) gets a 0700 subdirectory
``private/`` for the files; a world-writable one is refused (anyone could swap the
database), a group-writable one is warned about.

Floats round-trip exactly: ``created_at`` is a REAL (an IEEE double, as in Python),
specs and metrics are stored as canonical JSON, whose float repr is exact.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import stat
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .base import (
    ChangeConflict,
    IncarnationMismatch,
    JobNotFound,
    JobRecord,
    Keyframe,
    Metrics,
    RankOutOfRange,
    Reported,
    StaleGeneration,
    StoreError,
    StoreUnavailable,
    TooEarly,
    WorldSizeConflict,
    canonical_json,
)

__all__ = ["DB_FILENAME", "EmbeddedJobStore"]

JsonObjects = list[dict[str, Any]]  # (a method named ``list`` shadows the builtin below)

DB_FILENAME = "paramsched.sqlite3"
PRIVATE_SUBDIR = "private"

log = logging.getLogger("paramsched.store")

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id       TEXT PRIMARY KEY,
    spec         TEXT NOT NULL,     -- canonical JSON
    spec_hash    TEXT NOT NULL,
    generation   INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    world_size   INTEGER NOT NULL,
    created_at   REAL NOT NULL,
    issued_until INTEGER NOT NULL,
    resumed_from TEXT NOT NULL,
    incarnation  TEXT NOT NULL DEFAULT '',
    run_id       TEXT NOT NULL DEFAULT '',
    finished_at  REAL NOT NULL DEFAULT 0,  -- when a rank reported the end (0: not yet)
    held_until   INTEGER NOT NULL DEFAULT 0  -- the highest plan end a rank reported holding
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS progress (
    job_id     TEXT NOT NULL,
    rank       INTEGER NOT NULL,
    iterations INTEGER NOT NULL,
    PRIMARY KEY (job_id, rank)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decisions (
    job_id  TEXT NOT NULL,
    epoch   INTEGER NOT NULL,
    metrics TEXT NOT NULL,          -- canonical JSON of the metrics dict, or 'null'
    PRIMARY KEY (job_id, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    job_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,        -- 0, 1, ... in the order they were applied
    data   TEXT NOT NULL,           -- canonical JSON of the change
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keyframes (
    job_id      TEXT PRIMARY KEY,
    incarnation TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    iteration   INTEGER NOT NULL,
    data        TEXT NOT NULL       -- canonical JSON of the replay states
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    job_id TEXT NOT NULL,           -- not removed with the job: the trail outlives it
    seq    INTEGER NOT NULL,
    entry  TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""

_JOB_COLUMNS = (
    "spec, spec_hash, generation, version, world_size, created_at, issued_until, resumed_from, "
    "incarnation, run_id"
)
# Columns added after the first release: ALTER TABLE'd into files written before them.
_ADDED_JOB_COLUMNS = {"incarnation": "TEXT NOT NULL DEFAULT ''",
                      "run_id": "TEXT NOT NULL DEFAULT ''",
                      "finished_at": "REAL NOT NULL DEFAULT 0",
                      "held_until": "INTEGER NOT NULL DEFAULT 0"}


class StoreConfigError(StoreError, ValueError):
    """The data dir is unsafe to use (world-writable, or not a directory)."""


def private_store_dir(data_dir: Path) -> Path:
    """The 0700 folder the database files live in (see the module docstring)."""
    if not data_dir.exists():
        data_dir.mkdir(parents=True, mode=0o700)
        os.chmod(data_dir, 0o700)  # mkdir's mode is masked by the umask
        return data_dir
    mode = data_dir.stat().st_mode
    if not stat.S_ISDIR(mode):
        raise StoreConfigError(f"the data dir {data_dir} is not a directory")
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise StoreConfigError(
            f"the data dir {data_dir} is world-writable (mode {stat.S_IMODE(mode):o}): anyone "
            "could replace the job store; use a directory only this user can write, e.g. "
            f"chmod 700 {data_dir}")
    if mode & stat.S_IWGRP:
        log.warning("the data dir %s is group-writable (mode %o); the job store goes in its "
                    "0700 subdirectory %s/", data_dir, stat.S_IMODE(mode), PRIVATE_SUBDIR)
    if not mode & 0o077 or (data_dir / DB_FILENAME).exists():
        # Private already, or a store written before files were private: keep it in place
        # (its files become 0600 below).
        return data_dir
    private = data_dir / PRIVATE_SUBDIR
    private.mkdir(mode=0o700, exist_ok=True)
    os.chmod(private, 0o700)
    return private


def _private_files(path: Path) -> None:
    """Create the database file 0600 (sqlite gives its -wal/-shm files the same mode)
    and make files written by an older version 0600 too."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            os.chmod(candidate, 0o600)


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    ``job_id >= prefix AND job_id < bound`` selects exactly the ids with that prefix
    and lets sqlite walk the primary key instead of scanning (text compares as UTF-8
    bytes, i.e. by code point, like Python's ``str``). ``None``: no upper bound.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            successor = last + 1
            if 0xD800 <= successor <= 0xDFFF:  # surrogates cannot be stored as UTF-8
                successor = 0xE000
            return "".join(chars) + chr(successor)
    return None


@dataclass
class _CommitQueue:
    """Writes waiting for the next group commit, and the task committing them."""

    pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = field(
        default_factory=list)
    committer: asyncio.Task[None] | None = None


class EmbeddedJobStore:
    """A ``JobStore`` in a local sqlite3 file; safe for several processes on one dir."""

    def __init__(self, data_dir: str | Path, *, busy_timeout: float = 10.0) -> None:
        self.data_dir = Path(data_dir)
        self._lock = threading.Lock()
        try:
            self.path = private_store_dir(self.data_dir) / DB_FILENAME
            _private_files(self.path)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each method is
            # exactly the transaction we wrote. check_same_thread=False: the connection
            # moves between to_thread workers, always under self._lock.
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open the job store at {self.path}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="paramsched-store")
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _CommitQueue] = (
            weakref.WeakKeyDictionary())
        self._call(self._init_schema, write=False, transaction=False)

    @staticmethod
    def _init_schema(conn: sqlite3.Connection) -> None:
        # journal_mode is stored in the file; synchronous is per connection.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            present = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            for column, declaration in _ADDED_JOB_COLUMNS.items():
                if column not in present:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {declaration}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- plumbing -------------------------------------------------------------------

    def _call(
        self,
        fn: Callable[[sqlite3.Connection], _T],
        *,
        write: bool,
        transaction: bool = True,
    ) -> _T:
        """Run ``fn`` as one transaction (blocking); translate sqlite errors."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreUnavailable(f"the job store at {self.path} is closed")
            try:
                if not transaction:
                    return fn(conn)
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result
            except sqlite3.OperationalError as exc:
                # "database is locked" past busy_timeout, disk full, I/O error, ...
                raise StoreUnavailable(f"job store at {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"job store at {self.path}: {exc}") from exc

    async def _run(self, fn: Callable[[sqlite3.Connection], _T], *, write: bool) -> _T:
        if self._conn is None:
            raise StoreUnavailable(f"the job store at {self.path} is closed")
        loop = asyncio.get_running_loop()
        if not write:
            return await loop.run_in_executor(self._executor, self._call_read, fn)
        queue = self._queues.get(loop)
        if queue is None:  # (one queue per event loop: a future belongs to its loop)
            queue = self._queues[loop] = _CommitQueue()
        future: asyncio.Future[Any] = loop.create_future()
        queue.pending.append((fn, future))
        if queue.committer is None or queue.committer.done():
            queue.committer = loop.create_task(self._commit_pending(queue))
        result: _T = await future
        return result

    def _call_read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return self._call(fn, write=False)

    async def _commit_pending(self, queue: _CommitQueue) -> None:
        """Commit the waiting writes, a batch per transaction, until none wait."""
        loop = asyncio.get_running_loop()
        while queue.pending:
            batch, queue.pending = queue.pending, []
            try:
                outcomes = await loop.run_in_executor(
                    self._executor, self._call_batch, [fn for fn, _ in batch])
            except BaseException as exc:  # the whole transaction failed: nobody's write
                outcomes = [(False, exc)] * len(batch)
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():  # the caller was cancelled (its write still happened)
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _call_batch(self, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[
            tuple[bool, Any]]:
        """Run ``fns`` in one write transaction, each in a savepoint; (ok, value) each."""

        def run_all(conn: sqlite3.Connection) -> list[tuple[bool, Any]]:
            outcomes: list[tuple[bool, Any]] = []
            for fn in fns:
                conn.execute("SAVEPOINT write")
                try:
                    value = fn(conn)
                except sqlite3.OperationalError:
                    raise  # the database itself failed: the whole batch does
                except Exception as exc:  # this write's refusal (or bug) undoes it alone
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE write")
                    outcomes.append((True, value))
            return outcomes

        return self._call(run_all, write=True)

    @staticmethod
    def _read(conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = conn.execute(
            f"SELECT {_JOB_COLUMNS}, finished_at, held_until FROM jobs WHERE job_id = ?",
            (job_id,)
        ).fetchone()
        if row is None:
            return None
        (spec, spec_hash, generation, version, world_size, created_at, issued, resumed,
         incarnation, run_id, finished_at, held_until) = row
        progress, decisions, num_changes, changes = EmbeddedJobStore._children(
            conn, job_id, -1)
        assert changes is not None  # (the caller holds none of them)
        return JobRecord(
            job_id=job_id,
            spec=json.loads(spec),
            spec_hash=spec_hash,
            generation=generation,
            version=version,
            world_size=world_size,
            created_at=float(created_at),
            issued_until=issued,
            progress=progress,
            decisions=decisions,
            resumed_from=resumed,
            changes=changes,
            num_changes=num_changes,
            incarnation=incarnation,
            run_id=run_id,
            finished_at=float(finished_at),
            held_until=int(held_until),
        )

    @staticmethod
    def _children(conn: sqlite3.Connection, job_id: str, known_changes: int) -> tuple[
            dict[int, int], dict[int, Metrics | None], int, JsonObjects | None]:
        """A job's progress, decisions, number of changes, and the changes unless the
        caller holds ``known_changes`` of them (None then)."""
        progress = conn.execute(
            "SELECT rank, iterations FROM progress WHERE job_id = ?", (job_id,)
        ).fetchall()
        decisions = conn.execute(
            "SELECT epoch, metrics FROM decisions WHERE job_id = ?", (job_id,)
        ).fetchall()
        (num_changes,) = conn.execute(
            "SELECT count(*) FROM changes WHERE job_id = ?", (job_id,)
        ).fetchone()
        changes = None
        if num_changes != known_changes:
            changes = [json.loads(data) for (data,) in conn.execute(
                "SELECT data FROM changes WHERE job_id = ? ORDER BY seq", (job_id,))]
        return ({int(rank): int(iterations) for rank, iterations in progress},
                {int(epoch): json.loads(metrics) for epoch, metrics in decisions},
                int(num_changes), changes)

    @classmethod
    def _read_existing(cls, conn: sqlite3.Connection, job_id: str) -> JobRecord:
        """Read a job this transaction just saw or wrote (it cannot have vanished)."""
        record = cls._read(conn, job_id)
        if record is None:
            raise JobNotFound(job_id)
        return record

    @staticmethod
    def _write_children(
        conn: sqlite3.Connection,
        job_id: str,
        progress: dict[int, int],
        decisions: dict[int, Metrics | None],
    ) -> None:
        """Replace the job's progress and decisions rows."""
        conn.execute("DELETE FROM progress WHERE job_id = ?", (job_id,))
        conn.execute("DELETE FROM decisions WHERE job_id = ?", (job_id,))
        conn.executemany(
            "INSERT INTO progress (job_id, rank, iterations) VALUES (?, ?, ?)",
            [(job_id, int(rank), int(it)) for rank, it in progress.items()],
        )
        conn.executemany(
            "INSERT INTO decisions (job_id, epoch, metrics) VALUES (?, ?, ?)",
            [(job_id, int(epoch), canonical_json(m)) for epoch, m in decisions.items()],
        )

    # -- JobStore -------------------------------------------------------------------

    async def create(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Store ``record`` unless the job exists. Returns (stored record, created)."""
        spec_json = canonical_json(record.spec)  # validate before taking the lock

        def op(conn: sqlite3.Connection) -> tuple[JobRecord, bool]:
            existing = self._read(conn, record.job_id)
            if existing is not None:
                return existing, False
            conn.execute(
                f"INSERT INTO jobs (job_id, {_JOB_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.job_id,
                    spec_json,
                    record.spec_hash,
                    int(record.generation),
                    int(record.version),
                    int(record.world_size),
                    float(record.created_at),
                    int(record.issued_until),
                    record.resumed_from,
                    record.incarnation,
                    record.run_id,
                ),
            )
            self._write_children(conn, record.job_id, record.progress, record.decisions)
            return record.copy(), True

        return await self._run(op, write=True)

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._run(lambda conn: self._read(conn, job_id), write=False)

    async def list(self, prefix: str = "", after: str = "", limit: int = 100) -> list[JobRecord]:
        """Jobs whose id starts with ``prefix`` and sorts after ``after``, by id."""
        if limit <= 0:
            return []
        upper = _prefix_upper_bound(prefix)

        def op(conn: sqlite3.Connection) -> list[JobRecord]:
            sql = "SELECT job_id FROM jobs WHERE job_id >= ? AND job_id > ?"
            params: list[Any] = [prefix, after]
            if upper is not None:
                sql += " AND job_id < ?"
                params.append(upper)
            sql += " ORDER BY job_id LIMIT ?"
            params.append(limit)
            ids = [row[0] for row in conn.execute(sql, params).fetchall()]
            records = (self._read(conn, job_id) for job_id in ids)
            return [r for r in records if r is not None]

        return await self._run(op, write=False)

    async def count(self, prefix: str = "", limit: int = 1000) -> int:
        """How many jobs' ids start with ``prefix``, counting at most ``limit``."""
        upper = _prefix_upper_bound(prefix)

        def op(conn: sqlite3.Connection) -> int:
            sql = "SELECT 1 FROM jobs WHERE job_id >= ?"
            params: list[Any] = [prefix]
            if upper is not None:
                sql += " AND job_id < ?"
                params.append(upper)
            (n,) = conn.execute(f"SELECT count(*) FROM ({sql} LIMIT ?)",
                                [*params, int(limit)]).fetchone()
            return int(n)

        return await self._run(op, write=False)

    async def delete(self, job_id: str, audit_entry: dict[str, Any] | None = None, *,
                     finished_before: float | None = None) -> bool:
        """Remove every row of the job but its audit trail. Returns whether it existed
        (and, with ``finished_before``, had finished by then: else nothing changes)."""
        entry = canonical_json(audit_entry) if audit_entry is not None else None

        def op(conn: sqlite3.Connection) -> bool:
            if finished_before is not None:
                row = conn.execute("SELECT finished_at FROM jobs WHERE job_id = ?",
                                   (job_id,)).fetchone()
                if row is None or not 0 < row[0] <= finished_before:
                    return False
            existed = conn.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,)).rowcount > 0
            conn.execute("DELETE FROM progress WHERE job_id = ?", (job_id,))
            conn.execute("DELETE FROM decisions WHERE job_id = ?", (job_id,))
            conn.execute("DELETE FROM changes WHERE job_id = ?", (job_id,))
            conn.execute("DELETE FROM keyframes WHERE job_id = ?", (job_id,))
            if existed and entry is not None:
                self._append_audit(conn, job_id, [entry])
            return existed

        return await self._run(op, write=True)

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
        """Record ranks' progress atomically; see ``JobStore.report``."""
        progress_rows = [(job_id, int(rank), int(iteration))]
        progress_rows += [(job_id, int(r), int(i)) for r, i in (more_progress or {}).items()]
        decision_row = (
            (int(decision[0]), canonical_json(decision[1])) if decision is not None else None
        )

        def op(conn: sqlite3.Connection) -> Reported:
            # The job's row, read once: what the checks need, and the fields of the
            # record returned, which this transaction alone may change (it holds the
            # write lock), so they are updated here rather than read again. The spec
            # only when the caller does not hold it.
            row = conn.execute(
                "SELECT CASE WHEN ? <> '' AND spec_hash = ? THEN NULL ELSE spec END, "
                "spec_hash, generation, version, world_size, created_at, issued_until, "
                "resumed_from, incarnation, run_id, finished_at, held_until FROM jobs "
                "WHERE job_id = ?", (known_spec_hash, known_spec_hash, job_id)
            ).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            (spec, spec_hash, stored_generation, version, world_size, created_at, issued,
             resumed, stored_incarnation, run_id, stored_finished, stored_held) = row
            if incarnation is not None and stored_incarnation != incarnation:
                raise IncarnationMismatch(job_id, incarnation, stored_incarnation)
            if stored_generation != generation:
                raise StaleGeneration(job_id, generation, stored_generation)
            for _, reported, _ in progress_rows:
                if world_size and reported >= world_size:
                    raise RankOutOfRange(job_id, reported, world_size)
            conn.executemany(
                "INSERT INTO progress (job_id, rank, iterations) VALUES (?, ?, ?) "
                "ON CONFLICT (job_id, rank) "
                "DO UPDATE SET iterations = max(iterations, excluded.iterations)",
                progress_rows,
            )
            if decision_row is not None:
                conn.execute(
                    "INSERT INTO decisions (job_id, epoch, metrics) VALUES (?, ?, ?) "
                    "ON CONFLICT (job_id, epoch) DO NOTHING",
                    (job_id, *decision_row),
                )
            issued = max(issued, int(issue_until))
            version += 1
            finished = float(finished_at) if finished_at > 0 and stored_finished == 0 \
                else float(stored_finished)
            held = max(int(stored_held), int(held_until))
            conn.execute(
                "UPDATE jobs SET issued_until = ?, version = ?, finished_at = ?, "
                "held_until = ? WHERE job_id = ?", (issued, version, finished, held, job_id))
            progress, decisions, num_changes, changes = self._children(
                conn, job_id, known_changes)
            return Reported(
                job_id=job_id, spec=json.loads(spec) if spec is not None else None,
                spec_hash=spec_hash, generation=stored_generation, version=version,
                world_size=world_size, created_at=float(created_at), issued_until=issued,
                progress=progress, decisions=decisions, resumed_from=resumed,
                changes=changes, num_changes=num_changes, incarnation=stored_incarnation,
                run_id=run_id, finished_at=finished, held_until=held)

        return await self._run(op, write=True)

    @staticmethod
    def _record_progress(conn: sqlite3.Connection, job_id: str, rank: int, iteration: int,
                         issue_until: int) -> None:
        conn.execute(
            "INSERT INTO progress (job_id, rank, iterations) VALUES (?, ?, ?) "
            "ON CONFLICT (job_id, rank) "
            "DO UPDATE SET iterations = max(iterations, excluded.iterations)",
            (job_id, int(rank), int(iteration)),
        )
        conn.execute(
            "UPDATE jobs SET issued_until = max(issued_until, ?), version = version + 1 "
            "WHERE job_id = ?",
            (int(issue_until), job_id),
        )

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
        """A rank of ``run_id`` attaches; see ``JobStore.join``."""
        entry = canonical_json(audit_entry) if audit_entry is not None else None

        def op(conn: sqlite3.Connection) -> tuple[JobRecord, str]:
            record = self._read(conn, job_id)
            if record is None:
                raise JobNotFound(job_id)
            if record.run_id == run_id:
                if world_size and record.world_size and world_size != record.world_size:
                    raise WorldSizeConflict(job_id, world_size, record.world_size)
                if record.world_size and rank >= record.world_size:
                    raise RankOutOfRange(job_id, rank, record.world_size)
                if world_size and not record.world_size:
                    conn.execute("UPDATE jobs SET world_size = ? WHERE job_id = ?",
                                 (int(world_size), job_id))
                self._record_progress(conn, job_id, rank, 0, issue_until)
                return self._read_existing(conn, job_id), "joined"
            if record.has_progress:
                return record, "resume_required"
            conn.execute(
                "UPDATE jobs SET run_id = ?, world_size = ?, generation = generation + 1, "
                "resumed_from = '', finished_at = 0, held_until = 0 WHERE job_id = ?",
                (run_id, int(world_size), job_id))
            conn.execute("DELETE FROM progress WHERE job_id = ?", (job_id,))
            self._record_progress(conn, job_id, rank, 0, issue_until)
            if entry is not None:
                self._append_audit(conn, job_id, [entry])
            return self._read_existing(conn, job_id), "new_run"

        return await self._run(op, write=True)

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
        """Resume a job from a checkpoint state; see ``JobStore.load_state``.

        An existing job keeps its ``created_at``; its ``world_size`` becomes the given
        one unless that is 0 (unknown): a resumed run may use another world size.
        ``version`` is bumped like on every change.
        """
        spec_json = canonical_json(spec)
        issued_until = max(max(progress.values(), default=0), issue_until)
        change_rows = [canonical_json(o) for o in changes or []]
        restored = [canonical_json(e) for e in audit_entries or []]
        entry = canonical_json(audit_entry) if audit_entry is not None else None

        def op(conn: sqlite3.Connection) -> tuple[JobRecord, bool]:
            row = conn.execute(
                "SELECT generation, resumed_from FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
            if row is None:
                conn.execute(
                    f"INSERT INTO jobs (job_id, {_JOB_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        spec_json,
                        spec_hash,
                        int(min_generation),
                        int(world_size),
                        float(created_at),
                        int(issued_until),
                        state_hash,
                        incarnation,
                        run_id,
                    ),
                )
            else:
                stored_generation, resumed_from = row
                if resumed_from == state_hash:
                    return self._read_existing(conn, job_id), False
                conn.execute(
                    "UPDATE jobs SET spec = ?, spec_hash = ?, generation = ?, "
                    "version = version + 1, "
                    "world_size = CASE WHEN ? > 0 THEN ? ELSE world_size END, "
                    "issued_until = ?, resumed_from = ?, run_id = ?, finished_at = 0, "
                    "held_until = 0 WHERE job_id = ?",
                    (
                        spec_json,
                        spec_hash,
                        max(stored_generation + 1, int(min_generation)),
                        int(world_size),
                        int(world_size),
                        int(issued_until),
                        state_hash,
                        run_id,
                        job_id,
                    ),
                )
            self._write_children(conn, job_id, progress, decisions)
            conn.execute("DELETE FROM changes WHERE job_id = ?", (job_id,))
            conn.executemany("INSERT INTO changes (job_id, seq, data) VALUES (?, ?, ?)",
                             [(job_id, i, data) for i, data in enumerate(change_rows)])
            (trail,) = conn.execute("SELECT count(*) FROM audit WHERE job_id = ?",
                                    (job_id,)).fetchone()
            self._append_audit(conn, job_id, ([] if trail else restored)
                               + ([entry] if entry is not None else []))
            return self._read_existing(conn, job_id), True

        return await self._run(op, write=True)

    @staticmethod
    def _append_audit(conn: sqlite3.Connection, job_id: str, entries: Sequence[str]) -> None:
        (next_seq,) = conn.execute("SELECT coalesce(max(seq) + 1, 0) FROM audit WHERE job_id = ?",
                                   (job_id,)).fetchone()
        conn.executemany("INSERT INTO audit (job_id, seq, entry) VALUES (?, ?, ?)",
                         [(job_id, next_seq + i, e) for i, e in enumerate(entries)])

    async def reschedule(
        self,
        job_id: str,
        *,
        generation: int,
        expected_changes: int,
        change: dict[str, Any],
        audit_entry: dict[str, Any],
    ) -> JobRecord:
        """Append a change and its audit entry atomically; see ``JobStore.reschedule``."""
        data, entry = canonical_json(change), canonical_json(audit_entry)
        start = int(change["from_iteration"])

        def op(conn: sqlite3.Connection) -> JobRecord:
            row = conn.execute("SELECT generation, max(issued_until, held_until) FROM jobs "
                               "WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            # The earliest start: past every plan handed out and every plan a rank holds.
            stored_generation, issued_until = row
            if stored_generation != generation:
                raise StaleGeneration(job_id, generation, stored_generation)
            (count,) = conn.execute("SELECT count(*) FROM changes WHERE job_id = ?",
                                    (job_id,)).fetchone()
            if count != expected_changes:
                raise ChangeConflict(job_id, expected_changes, count)
            if issued_until > start:
                raise TooEarly(job_id, start, issued_until)
            conn.execute("INSERT INTO changes (job_id, seq, data) VALUES (?, ?, ?)",
                         (job_id, count, data))
            conn.execute("UPDATE jobs SET version = version + 1, finished_at = 0 "
                         "WHERE job_id = ?", (job_id,))
            self._append_audit(conn, job_id, [entry])
            return self._read_existing(conn, job_id)

        return await self._run(op, write=True)

    async def append_audit(self, job_id: str, entry: dict[str, Any]) -> None:
        data = canonical_json(entry)
        await self._run(lambda conn: self._append_audit(conn, job_id, [data]), write=True)

    async def audit(self, job_id: str) -> JsonObjects:
        def op(conn: sqlite3.Connection) -> JsonObjects:
            rows = conn.execute("SELECT entry FROM audit WHERE job_id = ? ORDER BY seq",
                                (job_id,)).fetchall()
            return [json.loads(entry) for (entry,) in rows]

        return await self._run(op, write=False)

    async def save_keyframe(self, job_id: str, keyframe: Keyframe) -> bool:
        """Keep the job's keyframe; see ``JobStore.save_keyframe``."""
        return await self._run(lambda conn: self._keep_keyframe(conn, job_id, keyframe),
                               write=True)

    @staticmethod
    def _keep_keyframe(conn: sqlite3.Connection, job_id: str, keyframe: Keyframe) -> bool:
        job = conn.execute("SELECT incarnation, generation FROM jobs WHERE job_id = ?",
                           (job_id,)).fetchone()
        if job is None or (job[0], job[1]) != (keyframe.incarnation, keyframe.generation):
            return False
        kept = conn.execute(
            "SELECT incarnation, generation, iteration FROM keyframes WHERE job_id = ?",
            (job_id,)).fetchone()
        if kept is not None and (kept[0], kept[1]) == (job[0], job[1]) and \
                kept[2] >= keyframe.iteration:
            return False
        conn.execute(
            "INSERT OR REPLACE INTO keyframes (job_id, incarnation, generation, iteration, "
            "data) VALUES (?, ?, ?, ?, ?)",
            (job_id, keyframe.incarnation, int(keyframe.generation),
             int(keyframe.iteration), keyframe.data))
        return True

    async def keyframe(self, job_id: str) -> Keyframe | None:
        def op(conn: sqlite3.Connection) -> Keyframe | None:
            row = conn.execute(
                "SELECT incarnation, generation, iteration, data FROM keyframes "
                "WHERE job_id = ?", (job_id,)).fetchone()
            return Keyframe(row[0], int(row[1]), int(row[2]), row[3]) if row else None

        return await self._run(op, write=False)

    async def close(self) -> None:
        """Close the connection; later calls raise ``StoreUnavailable``. Idempotent."""

        def op() -> None:
            with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()

        if self._conn is None:
            return
        queue = self._queues.get(asyncio.get_running_loop())
        if queue is not None and queue.committer is not None and not queue.committer.done():
            await asyncio.shield(queue.committer)  # writes already asked for land first
        await asyncio.get_running_loop().run_in_executor(self._executor, op)
        self._executor.shutdown(wait=False)
