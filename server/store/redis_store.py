"""The Redis JobStore: jobs shared by every server replica, durable through Redis' AOF.

Layout (``P`` is the prefix, ``J`` the job id)::

    P:{J}:job        hash  spec (canonical JSON), spec_hash, generation, version,
                           world_size, created_at, issued_until, resumed_from
    P:{J}:progress   hash  rank -> iterations done
    P:{J}:decisions  hash  epoch -> canonical JSON of the metrics, or "null"
    P:jobs           zset  job ids, all scores 0 (the index behind ``list``)

Why it is shaped like this:

* The hash tag ``{J}`` puts all of a job's keys in one Redis Cluster slot, so a Lua
  script may touch them together. (An empty job id would give the tag ``{}``, which
  Redis ignores; the service never creates one.)
* Every read-modify-write (create, report, load_state, delete) is ONE Lua script,
  registered once; keys travel in ``KEYS`` only. A script runs atomically, so
  concurrent reports from many ranks and many server replicas never lose an update,
  and a report is a single round trip.
* Values are stored as strings Python wrote: integers as ``str(int)``, floats as
  ``repr(float)`` and metrics/specs as canonical JSON, so every float round-trips
  bit-exactly. The scripts only compare integers (``tonumber`` is exact below 2**53)
  and never format a number themselves: counters move with ``HINCRBY``.
* The ``P:jobs`` index lives in another slot, so it cannot be updated inside the
  scripts; it is written with a separate command after create/load_state (ZADD) and
  delete (ZREM). It is therefore eventually consistent: ``list`` skips ids whose job
  hash is gone, and a crash between the script and the ZADD leaves a job that ``get``
  finds but ``list`` misses until the next ``create``/``load_state`` of that id.
* Connection failures, timeouts, a loading or read-only server become
  ``StoreUnavailable``; any other Redis error ``StoreError``. Nothing from redis-py
  leaks out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from .base import (
    JobNotFound,
    JobRecord,
    Metrics,
    StaleGeneration,
    StoreError,
    StoreUnavailable,
    canonical_json,
)

__all__ = ["RedisJobStore"]

# A Lua helper prepended to every script that returns a record. KEYS[1..3] are the
# job, progress and decisions keys. The reply is {fields, spec or false, progress
# (flat field/value list), decisions (flat)}; ``false`` becomes a nil reply.
_LUA_READ_JOB = """
local function read_job(with_spec)
  local fields = redis.call('HMGET', KEYS[1], 'spec_hash', 'generation', 'version',
    'world_size', 'created_at', 'issued_until', 'resumed_from')
  local spec = false
  if with_spec then spec = redis.call('HGET', KEYS[1], 'spec') end
  return {fields, spec, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
end

local function write_children(first)
  -- ARGV[first] = number of progress pairs, then those pairs, then decision pairs.
  redis.call('DEL', KEYS[2], KEYS[3])
  local n = tonumber(ARGV[first])
  local i = first + 1
  for _ = 1, n do
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  while i < #ARGV do
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
end
"""

_READ_SCRIPT = (
    _LUA_READ_JOB
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return read_job(true)
"""
)

# ARGV: spec, spec_hash, generation, version, world_size, created_at, issued_until,
#       resumed_from, then write_children's arguments from ARGV[9].
_CREATE_SCRIPT = (
    _LUA_READ_JOB
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, read_job(true)} end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'spec_hash', ARGV[2], 'generation', ARGV[3],
  'version', ARGV[4], 'world_size', ARGV[5], 'created_at', ARGV[6],
  'issued_until', ARGV[7], 'resumed_from', ARGV[8])
write_children(9)
return {1}
"""
)

# ARGV: generation, rank, iteration, has_decision ('1'/'0'), epoch, metrics JSON,
#       issue_until, known_spec_hash.
_REPORT_SCRIPT = (
    _LUA_READ_JOB
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local generation = redis.call('HGET', KEYS[1], 'generation')
if tonumber(generation) ~= tonumber(ARGV[1]) then return {'stale', generation} end
local done = redis.call('HGET', KEYS[2], ARGV[2])
if (not done) or tonumber(done) < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
if ARGV[4] == '1' then redis.call('HSETNX', KEYS[3], ARGV[5], ARGV[6]) end
if tonumber(redis.call('HGET', KEYS[1], 'issued_until')) < tonumber(ARGV[7]) then
  redis.call('HSET', KEYS[1], 'issued_until', ARGV[7])
end
redis.call('HINCRBY', KEYS[1], 'version', 1)
local with_spec = ARGV[8] == '' or redis.call('HGET', KEYS[1], 'spec_hash') ~= ARGV[8]
return {'ok', read_job(with_spec)}
"""
)

# ARGV: spec, spec_hash, min_generation, state_hash, world_size, created_at,
#       issued_until, then write_children's arguments from ARGV[8].
_LOAD_STATE_SCRIPT = (
    _LUA_READ_JOB
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'resumed_from') == ARGV[4] then return {0, read_job(true)} end
  -- generation = max(stored + 1, min_generation), without formatting a Lua number.
  if tonumber(redis.call('HGET', KEYS[1], 'generation')) >= tonumber(ARGV[3]) then
    redis.call('HINCRBY', KEYS[1], 'generation', 1)
  else
    redis.call('HSET', KEYS[1], 'generation', ARGV[3])
  end
  redis.call('HINCRBY', KEYS[1], 'version', 1)
else
  redis.call('HSET', KEYS[1], 'generation', ARGV[3], 'version', '1', 'created_at', ARGV[6])
end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'spec_hash', ARGV[2], 'issued_until', ARGV[7],
  'resumed_from', ARGV[4])
if tonumber(ARGV[5]) > 0 or redis.call('HEXISTS', KEYS[1], 'world_size') == 0 then
  redis.call('HSET', KEYS[1], 'world_size', ARGV[5])
end
write_children(8)
return {1, read_job(true)}
"""
)

_DELETE_SCRIPT = """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return existed
"""

# Errors that mean "the backend is not there right now" (retry later), as opposed to
# a bug or a misconfiguration. ConnectionError covers BusyLoadingError (AOF replay).
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    OSError,
)
# Redis answers these as plain error replies when it cannot persist or is failing over.
_UNAVAILABLE_REPLIES = ("MISCONF", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN")


@contextmanager
def _backend_errors(what: str) -> Iterator[None]:
    """Translate redis-py exceptions into the store's own, at the boundary."""
    try:
        yield
    except _UNAVAILABLE_ERRORS as exc:
        raise StoreUnavailable(f"redis unavailable during {what}: {exc}") from exc
    except redis_errors.ResponseError as exc:
        if str(exc).startswith(_UNAVAILABLE_REPLIES):
            raise StoreUnavailable(f"redis unavailable during {what}: {exc}") from exc
        raise StoreError(f"redis error during {what}: {exc}") from exc
    except redis_errors.RedisError as exc:
        raise StoreError(f"redis error during {what}: {exc}") from exc


def _pairs(mapping: dict[int, Any], encode: Any) -> list[str]:
    flat: list[str] = []
    for key, value in mapping.items():
        flat += [str(int(key)), encode(value)]
    return flat


def _children_args(progress: dict[int, int], decisions: dict[int, Metrics | None]) -> list[str]:
    """``write_children``'s ARGV tail: count, progress pairs, decision pairs."""
    return [
        str(len(progress)),
        *_pairs(progress, lambda it: str(int(it))),
        *_pairs(decisions, canonical_json),
    ]


def _flat_to_dict(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _record(job_id: str, reply: Sequence[Any]) -> JobRecord:
    """Build a JobRecord from ``read_job``'s reply (strings, decode_responses=True)."""
    fields, spec, progress, decisions = reply
    spec_hash, generation, version, world_size, created_at, issued_until, resumed = fields
    return JobRecord(
        job_id=job_id,
        spec=json.loads(spec) if spec is not None else None,
        spec_hash=spec_hash,
        generation=int(generation),
        version=int(version),
        world_size=int(world_size),
        created_at=float(created_at),
        issued_until=int(issued_until),
        progress={int(k): int(v) for k, v in _flat_to_dict(progress).items()},
        decisions={int(k): json.loads(v) for k, v in _flat_to_dict(decisions).items()},
        resumed_from=resumed,
    )


class RedisJobStore:
    """A ``JobStore`` on Redis, shared by every server replica that uses the same URL.

    ``socket_timeout`` bounds every connect and reply (a hung Redis surfaces as
    ``StoreUnavailable`` after about twice that: one retry on a fresh connection).
    ``prefix`` namespaces the keys, so several deployments can share one Redis.
    The key layout is Cluster-ready (one slot per job); the client is a standalone
    ``redis.asyncio.Redis``.
    """

    def __init__(
        self, url: str, *, prefix: str = "paramsched", socket_timeout: float = 5.0
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._index = f"{prefix}:jobs"
        # One quick retry on a fresh connection heals a pooled connection that died
        # with a Redis restart; more retries would only delay StoreUnavailable.
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
            decode_responses=True,
        )
        self._read_script = self._redis.register_script(_READ_SCRIPT)
        self._create_script = self._redis.register_script(_CREATE_SCRIPT)
        self._report_script = self._redis.register_script(_REPORT_SCRIPT)
        self._load_state_script = self._redis.register_script(_LOAD_STATE_SCRIPT)
        self._delete_script = self._redis.register_script(_DELETE_SCRIPT)

    def job_keys(self, job_id: str) -> list[str]:
        """The job's keys: job hash, progress hash, decisions hash (one hash slot)."""
        return [f"{self.prefix}:{{{job_id}}}:{part}" for part in ("job", "progress", "decisions")]

    async def create(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Store ``record`` unless the job exists. Returns (stored record, created)."""
        args = [
            canonical_json(record.spec),
            record.spec_hash,
            str(int(record.generation)),
            str(int(record.version)),
            str(int(record.world_size)),
            repr(float(record.created_at)),
            str(int(record.issued_until)),
            record.resumed_from,
            *_children_args(record.progress, record.decisions),
        ]
        with _backend_errors("create"):
            reply = await self._create_script(keys=self.job_keys(record.job_id), args=args)
            # Also on created=False: a retried create heals a ZADD lost to a crash.
            await self._redis.zadd(self._index, {record.job_id: 0})
        if reply[0] == 1:
            return record.copy(), True
        return _record(record.job_id, reply[1]), False

    async def get(self, job_id: str) -> JobRecord | None:
        with _backend_errors("get"):
            reply = await self._read_script(keys=self.job_keys(job_id))
        return _record(job_id, reply) if reply is not None else None

    async def list(self, prefix: str = "", after: str = "", limit: int = 100) -> list[JobRecord]:
        """Jobs whose id starts with ``prefix`` and sorts after ``after``, by id.

        Reads the index page by page (byte order of UTF-8 = code point order, as in
        Python) and skips ids whose job is gone, so a page is short only at the end.
        """
        if limit <= 0:
            return []
        # Bounds as bytes: 0xff never occurs in UTF-8, so "[prefix\\xff" is above every
        # id that starts with prefix and below every larger id that does not.
        low = b"(" + after.encode() if after >= prefix else b"[" + prefix.encode()
        high = b"[" + prefix.encode() + b"\xff" if prefix else b"+"
        records: list[JobRecord] = []
        with _backend_errors("list"):
            while len(records) < limit:
                wanted = limit - len(records)
                page = await self._redis.zrangebylex(self._index, low, high, start=0, num=wanted)
                ids = [i.decode() if isinstance(i, bytes) else i for i in page]
                if not ids:
                    break
                async with self._redis.pipeline(transaction=False) as pipe:
                    for job_id in ids:
                        await self._read_script(keys=self.job_keys(job_id), client=pipe)
                    replies = await pipe.execute()
                records += [
                    _record(job_id, reply)
                    for job_id, reply in zip(ids, replies, strict=True)
                    if reply is not None
                ]
                if len(ids) < wanted:
                    break
                low = b"(" + ids[-1].encode()
        return records

    async def delete(self, job_id: str) -> bool:
        """Remove every key of the job. Returns whether it existed."""
        with _backend_errors("delete"):
            existed = await self._delete_script(keys=self.job_keys(job_id))
            await self._redis.zrem(self._index, job_id)
        return bool(existed)

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
    ) -> JobRecord:
        """Record a rank's progress in one script call; see ``JobStore.report``."""
        if decision is None:
            decision_args = ["0", "", ""]
        else:
            decision_args = ["1", str(int(decision[0])), canonical_json(decision[1])]
        args = [
            str(int(generation)),
            str(int(rank)),
            str(int(iteration)),
            *decision_args,
            str(int(issue_until)),
            known_spec_hash,
        ]
        with _backend_errors("report"):
            reply = await self._report_script(keys=self.job_keys(job_id), args=args)
        status = reply[0]
        if status == "missing":
            raise JobNotFound(job_id)
        if status == "stale":
            raise StaleGeneration(job_id, generation, int(reply[1]))
        return _record(job_id, reply[1])

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
    ) -> tuple[JobRecord, bool]:
        """Resume a job from a checkpoint state; see ``JobStore.load_state``.

        An existing job keeps its ``created_at``; its ``world_size`` becomes the given
        one unless that is 0 (unknown): a resumed run may use another world size.
        ``version`` is bumped like on every change.
        """
        args = [
            canonical_json(spec),
            spec_hash,
            str(int(min_generation)),
            state_hash,
            str(int(world_size)),
            repr(float(created_at)),
            str(max((int(it) for it in progress.values()), default=0)),
            *_children_args(progress, decisions),
        ]
        with _backend_errors("load_state"):
            reply = await self._load_state_script(keys=self.job_keys(job_id), args=args)
            await self._redis.zadd(self._index, {job_id: 0})
        return _record(job_id, reply[1]), reply[0] == 1

    async def close(self) -> None:
        """Close the connection pool (a later call would open new connections)."""
        with _backend_errors("close"):
            await self._redis.aclose()
