"""The Redis JobStore: jobs shared by every server replica, durable through Redis' AOF.

Layout (``P`` is the prefix, ``J`` the job id)::

    P:{J}:job        hash  spec (canonical JSON), spec_hash, generation, version,
                           world_size, created_at, issued_until, resumed_from,
                           incarnation, run_id, held_until (absent in jobs stored
                           before them: "" / 0)
    P:{J}:progress   hash  rank -> iterations done
    P:{J}:decisions  hash  epoch -> canonical JSON of the metrics, or "null"
    P:{J}:changes    list  the job's changes (reschedules), canonical JSON, in order
    P:{J}:audit      list  the audit trail, canonical JSON; kept when the job is deleted
    P:jobs           zset  job ids, all scores 0 (the index behind ``list``)

Why it is shaped like this:

* The hash tag ``{J}`` puts all of a job's keys in one Redis Cluster slot, so a Lua
  script may touch them together. (An empty job id would give the tag ``{}``, which
  Redis ignores; the service never creates one.)
* Every read-modify-write (create, report, join, load_state, reschedule, delete,
  save_keyframe) is ONE Lua script, a file in ``lua/`` registered once per store; keys
  travel in ``KEYS`` only. A script runs atomically, so
  concurrent reports from many ranks and many server replicas never lose an update,
  and a report is a single round trip. Reports that arrive while one is in flight
  share the next round trip (one write of their scripts, then one ``WAIT``): a
  server's reports per second are bounded by its one event loop, not by Redis, and
  redis-py's per-command work is most of a report's cost there
  (``RedisJobStore._queue_report``; on a cluster, reports go one by one).
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

Redis Cluster: a URL ``redis+cluster://host:port`` (``rediss+cluster://`` with TLS)
selects ``redis.asyncio.cluster.RedisCluster``; ``host:port`` is any node, the client
discovers the others and routes each command by the slot of its keys. Nothing else
changes: each script's keys share the job's slot, so EVALSHA goes to the job's master
(a NOSCRIPT there is answered by SCRIPT LOAD on every master, then a retry); the index
is a single key, so ZADD/ZREM/ZRANGEBYLEX go to its own master. ``list`` reads the
jobs of a page concurrently (a pipeline cannot load scripts across masters). The
cluster client opens at most ``max_connections`` connections per node and fails
rather than waits beyond that, so the store bounds its commands in flight instead.

Redis Sentinel: ``redis+sentinel://[user:password@]H:P[,H:P...]/SERVICE[/DB]``
(``rediss+sentinel://`` with TLS to the sentinels and the master) asks the sentinels
for the master of ``SERVICE`` (redis-py's ``Sentinel``); a connection that fails, or
finds a master turned read-only replica, is dropped and the next one asks the
sentinels again, so after a failover the store follows the new master. The user and
password in the URL are the master's; the sentinels' own go in the query:
``?sentinel_username=U&sentinel_password=P``.

Replicas and ``WAIT``: replication is asynchronous, so a master that fails over may take
its last acknowledged writes with it. After every script that writes (a plan handed out,
a decision, a change, a resume, a join, a create, a delete), ``WAIT n timeout`` is
pipelined on the same connection (Redis refuses ``WAIT`` inside a script), and fewer
than ``n`` confirming replicas is ``StoreUnavailable``: the caller is told to retry
rather than handed a value a failover could lose. ``wait_replicas=None`` (the default)
waits for 1 replica whenever the master has one (re-read from ``INFO replication``
every few seconds) and for none otherwise; an explicit number is required always.
``WAIT`` does not make Redis strongly consistent: a write can reach a replica that is
then not the one promoted, or reach the master alone when ``WAIT`` fails and still be
kept. On a Redis Cluster the script and ``WAIT`` go together, on one connection, to
the master of the job's hash slot (``ClusterNode.execute_pipeline``); the default waits
for 1 replica when that slot has one (the client's slot map), and a MOVED reply or a
lost connection (a shard's master failed over) refreshes the slot map before the
write is tried again or ``StoreUnavailable`` is raised.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedSSLConnection
from redis.backoff import ExponentialBackoff

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

__all__ = ["CLUSTER_SCHEMES", "SENTINEL_SCHEMES", "RedisJobStore", "SentinelTarget",
           "cluster_url", "sentinel_target"]

JsonObjects = list[dict[str, Any]]  # (a method named ``list`` shadows the builtin below)

# URL schemes that select Redis Cluster, and the plain scheme redis-py parses instead.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
# URL schemes that select Redis Sentinel; the value says whether TLS is used.
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
# How often the default ``wait_replicas`` re-reads whether the master has replicas.
_AUTO_WAIT_RECHECK_S = 5.0
# Report pipelines in flight at once, and reports in one (``RedisJobStore._queue_report``).
_MAX_PIPELINES = 1
_MAX_BATCH = 64
# Event-loop turns a pipeline waits for more reports before it goes out: under load
# each turn starts more RPCs (gRPC accepts about one per turn), so pipelines grow and
# round trips fall; idle, a turn costs microseconds.
_GATHER_TURNS = 3

def _lua(name: str) -> str:
    """The Lua script ``lua/<name>.lua``; a script whose reply is a job record gets the
    helpers of ``lua/job.lua`` (``read_job``, ``write_children``) in front."""
    folder = resources.files(__package__).joinpath("lua")
    text = folder.joinpath(f"{name}.lua").read_text()
    if "read_job(" in text or "write_children(" in text:
        text = folder.joinpath("job.lua").read_text() + text
    return text


# Every read-modify-write is one script (atomic in Redis), registered once per store.
_READ_SCRIPT = _lua("read")
_CREATE_SCRIPT = _lua("create")
_REPORT_SCRIPT = _lua("report")
_JOIN_SCRIPT = _lua("join")
_LOAD_STATE_SCRIPT = _lua("load_state")
_DELETE_SCRIPT = _lua("delete")
_SAVE_KEYFRAME_SCRIPT = _lua("save_keyframe")
_RESCHEDULE_SCRIPT = _lua("reschedule")

# Errors that mean "the backend is not there right now" (retry later), as opposed to
# a bug or a misconfiguration. ConnectionError covers BusyLoadingError (AOF replay).
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    # Cluster client: no reachable node, a slot nobody serves (not RedisError's).
    redis_errors.RedisClusterException,
    OSError,
)
# Redis answers these as plain error replies when it cannot persist or is failing over.
_UNAVAILABLE_REPLIES = ("MISCONF", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN",
                        "NOREPLICAS")


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


def cluster_url(url: str) -> str | None:
    """The plain ``redis://``/``rediss://`` URL of a cluster URL, or None if not one."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower()) if sep else None
    return f"{plain}://{rest}" if plain else None


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed ``redis+sentinel://`` URL: where the sentinels are and what to ask them."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None  # the master's
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: bool = False


def sentinel_target(url: str) -> SentinelTarget | None:
    """Parse ``redis+sentinel://[u:p@]H:P[,H:P...]/SERVICE[/DB][?sentinel_password=..]``;
    None if ``url`` is not a sentinel URL. A bad one is ``ValueError`` naming the part."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        return None
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"sentinel URL: {item!r} is not HOST:PORT")
        sentinels.append((host.strip("[]"), int(port)))
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ValueError("sentinel URL: give the service name as the path, /SERVICE[/DB]")
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(f"sentinel URL: database {parts[1]!r} is not a number")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    return SentinelTarget(
        sentinels=tuple(sentinels), service=unquote(parts[0]),
        db=int(parts[1]) if len(parts) == 2 else 0, username=username, password=password,
        sentinel_username=options.get("sentinel_username"),
        sentinel_password=options.get("sentinel_password"),
        ssl=SENTINEL_SCHEMES[scheme.lower()])


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


def _int_pairs(flat: Sequence[str]) -> dict[int, int]:
    """A flat ``HGETALL`` reply of integers as a dict (progress: rank -> iterations)."""
    return dict(zip(map(int, flat[::2]), map(int, flat[1::2]), strict=True))


@dataclass
class _QueuedReport:
    """A report script call waiting for the next pipeline (``_queue_report``)."""

    keys: list[str]
    args: list[str]
    wait: bool  # its write must be confirmed by the replicas (``WAIT``)
    future: asyncio.Future[Any]


def _record(job_id: str, reply: Sequence[Any]) -> JobRecord:
    """A JobRecord from ``read_job``'s reply (strings, decode_responses=True) of a
    script that read the whole job."""
    reported = _reported(job_id, reply)
    assert reported.spec is not None and reported.changes is not None  # (all was read)
    return reported.record(reported.spec, reported.changes)


def _reported(job_id: str, reply: Sequence[Any]) -> Reported:
    """``read_job``'s reply (strings, decode_responses=True) as it is: without the spec
    or the changes where the report's caller holds them."""
    fields, spec, progress, decisions, num_changes, changes = reply
    (spec_hash, generation, version, world_size, created_at, issued_until, resumed,
     incarnation, run_id, finished_at, held_until) = fields
    return Reported(
        job_id=job_id,
        spec=json.loads(spec) if spec is not None else None,
        spec_hash=spec_hash,
        generation=int(generation),
        version=int(version),
        world_size=int(world_size),
        created_at=float(created_at),
        issued_until=int(issued_until),
        progress=_int_pairs(progress),
        decisions=({int(k): json.loads(v) for k, v in _flat_to_dict(decisions).items()}
                   if decisions else {}),
        resumed_from=resumed,
        changes=[json.loads(c) for c in changes] if changes is not None else None,
        num_changes=int(num_changes),
        incarnation=incarnation or "",
        run_id=run_id or "",
        finished_at=float(finished_at or 0),
        held_until=int(held_until or 0),
    )


class RedisJobStore:
    """A ``JobStore`` on Redis, shared by every server replica that uses the same URL.

    ``url`` is ``redis://``/``rediss://`` for one Redis server, or
    ``redis+cluster://``/``rediss+cluster://`` (any node) for a Redis Cluster.
    ``socket_timeout`` bounds every connect and reply (a hung Redis surfaces as
    ``StoreUnavailable`` after about twice that: one retry on a fresh connection).
    ``prefix`` namespaces the keys, so several deployments can share one Redis.
    ``max_connections`` caps the connections (per node on a cluster); commands beyond
    it wait for a free one.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "paramsched",
        socket_timeout: float = 5.0,
        max_connections: int = 256,
        wait_replicas: int | None = None,
        wait_timeout: float = 1.0,
    ) -> None:
        if wait_replicas is not None and wait_replicas < 0:
            raise ValueError(f"wait_replicas must be >= 0 or None, got {wait_replicas}")
        if wait_timeout <= 0:
            raise ValueError(f"wait_timeout must be > 0 seconds, got {wait_timeout}")
        self.url = url
        self.socket_timeout = socket_timeout
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self._auto_replicas = 0
        self._auto_checked = -1e9
        self.prefix = prefix
        self._index = f"{prefix}:jobs"
        # One quick retry on a fresh connection heals a pooled connection that died
        # with a Redis restart; more retries would only delay StoreUnavailable.
        options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
            "decode_responses": True,
        }
        plain_url = cluster_url(url)
        target = sentinel_target(url)
        self.cluster = plain_url is not None
        self.sentinel: Sentinel | None = None
        self._redis: aioredis.Redis | RedisCluster
        if target is not None:
            self.sentinel = self._sentinel(target, options)
            master_options: dict[str, Any] = {
                "db": target.db, "username": target.username, "password": target.password,
                "max_connections": max_connections, **options}
            if target.ssl:
                master_options["connection_class"] = SentinelManagedSSLConnection
            self._redis = self.sentinel.master_for(
                target.service, redis_class=aioredis.Redis, **master_options)
        elif plain_url is not None:
            self._redis = RedisCluster.from_url(
                plain_url, max_connections=max_connections, **options
            )
        else:
            # A blocking pool: past max_connections a command waits (up to the socket
            # timeout) for a free connection, rather than failing at once with "Too many
            # connections" as redis-py's default pool does under a burst of reports.
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=socket_timeout, **options)
            self._redis = aioredis.Redis(connection_pool=pool)
        # Created lazily on the event loop that uses the store.
        self._max_in_flight = max_connections
        self._in_flight: asyncio.Semaphore | None = None
        self._read_script = self._redis.register_script(_READ_SCRIPT)
        self._create_script = self._redis.register_script(_CREATE_SCRIPT)
        self._report_script = self._redis.register_script(_REPORT_SCRIPT)
        self._load_state_script = self._redis.register_script(_LOAD_STATE_SCRIPT)
        self._join_script = self._redis.register_script(_JOIN_SCRIPT)
        self._delete_script = self._redis.register_script(_DELETE_SCRIPT)
        self._reschedule_script = self._redis.register_script(_RESCHEDULE_SCRIPT)
        self._save_keyframe_script = self._redis.register_script(_SAVE_KEYFRAME_SCRIPT)
        # Reports waiting for the next pipeline, on the event loop that queued them.
        self._queued: list[_QueuedReport] = []
        self._queue_loop: asyncio.AbstractEventLoop | None = None
        self._senders = 0  # tasks sending queued reports (at most _MAX_PIPELINES)
        self._report_keys: dict[str, list[str]] = {}  # job id -> its keys (never mutated)
        self._batches: set[asyncio.Task[None]] = set()
        # The reports' own connection (``_reports_line``) and the loop it belongs to.
        self._report_line: tuple[Any, asyncio.AbstractEventLoop | None] = (None, None)

    @staticmethod
    def _sentinel(target: SentinelTarget, options: dict[str, Any]) -> Sentinel:
        """The sentinels' client: their own credentials, the same timeouts and TLS."""
        sentinel_options: dict[str, Any] = {
            "socket_timeout": options["socket_timeout"],
            "socket_connect_timeout": options["socket_connect_timeout"],
            "decode_responses": True,
        }
        if target.sentinel_username:
            sentinel_options["username"] = target.sentinel_username
        if target.sentinel_password:
            sentinel_options["password"] = target.sentinel_password
        if target.ssl:
            sentinel_options["ssl"] = True
        return Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)

    async def _replicas_to_wait_for(self, key: str) -> int:
        """``WAIT``'s count: the explicit one, or 1 while the master (of ``key``'s slot,
        on a cluster) has a replica."""
        if self.wait_replicas is not None:
            return self.wait_replicas
        if isinstance(self._redis, RedisCluster):
            # The slot map lists the slot's master first, then its replicas: no round trip.
            nodes = self._redis.nodes_manager.slots_cache.get(self._redis.keyslot(key), [])
            return 1 if len(nodes) > 1 else 0
        now = time.monotonic()
        if now - self._auto_checked >= _AUTO_WAIT_RECHECK_S:
            self._auto_checked = now
            info = await self._redis.info("replication")
            self._auto_replicas = 1 if int(info.get("connected_slaves", 0)) > 0 else 0
        return self._auto_replicas

    async def _write(self, script: Any, keys: list[str], args: list[str], what: str) -> Any:
        """Run a writing script, then ``WAIT`` on the same connection in the same
        round trip; fewer confirming replicas than asked is ``StoreUnavailable``.
        Call inside ``_backend``."""
        replicas = await self._replicas_to_wait_for(keys[0])
        if replicas == 0:
            return await script(keys=keys, args=args)
        timeout_ms = max(1, int(self.wait_timeout * 1000))
        for _attempt in range(3):
            if isinstance(self._redis, RedisCluster):
                reply, acked = await self._on_slot_master(script, keys, args, replicas,
                                                          timeout_ms)
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                    pipe.execute_command("WAIT", replicas, timeout_ms)
                    reply, acked = await pipe.execute(raise_on_error=False)
            if isinstance(reply, redis_errors.NoScriptError):
                await self._redis.script_load(script.script)  # the Redis lost its scripts
                continue
            if isinstance(reply, (redis_errors.MovedError, redis_errors.AskError)):
                # The slot moved (a shard's failover, a reshard): learn where, try again.
                assert isinstance(self._redis, RedisCluster)
                await self._redis.nodes_manager.initialize()
                continue
            if isinstance(reply, Exception):
                raise reply
            if isinstance(acked, Exception):
                raise acked
            if int(acked) < replicas:
                self._auto_checked = -1e9  # maybe the replica is gone: look again
                raise StoreUnavailable(
                    f"redis: {what} was not confirmed by {replicas} replica(s) within "
                    f"{self.wait_timeout:g} s (only {acked}); retry")
            return reply
        raise StoreError(f"redis error during {what}: script could not be loaded")

    async def _on_slot_master(self, script: Any, keys: list[str], args: list[str],
                              replicas: int, timeout_ms: int) -> tuple[Any, Any]:
        """EVALSHA then WAIT on ONE connection to the master of the job's slot (``WAIT``
        counts the writes of its own connection), as redis-py's cluster pipeline does
        per node; returns both replies (errors as values)."""
        assert isinstance(self._redis, RedisCluster)
        if self._redis._initialize:  # the slot map is read on the first command
            await self._redis.initialize()
        node = self._redis.get_node_from_key(keys[0])
        if node is None:
            raise StoreUnavailable(f"redis cluster: no master serves the slot of {keys[0]!r}")
        commands = [PipelineCommand(0, "EVALSHA", script.sha, len(keys), *keys, *args),
                    PipelineCommand(1, "WAIT", replicas, timeout_ms)]
        try:
            await node.execute_pipeline(commands)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
            # Likely a master that failed over: the next call should ask the cluster.
            await self._redis.nodes_manager.initialize()
            raise
        return commands[0].result, commands[1].result

    async def _queue_report(self, keys: list[str], args: list[str], wait: bool) -> Any:
        """The report script's reply, from a pipeline shared with other reports.

        Sending each report on its own costs redis-py's per-call work (a connection
        out of the pool and back, a write, a wake-up per reply) on the server's one
        event loop, which is what limits a server's reports per second. So at most
        ``_MAX_PIPELINES`` pipelines are in flight: a report that finds fewer starts
        one, which goes out after ``_GATHER_TURNS`` turns of the event loop (the
        reports of the RPCs being started join it); the others queue, and the next
        pipeline takes every report queued meanwhile, with ONE ``WAIT`` after them
        when any needs it (``WAIT`` counts the replicas that acknowledged every earlier
        write of its connection, and a pipeline runs on one connection, so it confirms
        them all). Each script stays atomic on its own, and each caller is answered
        only after its own write (and, if it waits, its confirmation) came back."""
        loop = asyncio.get_running_loop()
        if self._queue_loop is not loop:  # (a store outliving its first event loop)
            self._queue_loop, self._queued, self._senders = loop, [], 0
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append(_QueuedReport(keys, args, wait, future))
        if self._senders < _MAX_PIPELINES:
            self._senders += 1
            task = loop.create_task(self._send_queued())
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)
        return await future

    async def _send_queued(self) -> None:
        """Send the queued reports, a pipeline at a time, until none are left."""
        loop = asyncio.get_running_loop()
        try:
            while self._queued:
                for _turn in range(_GATHER_TURNS):
                    if len(self._queued) >= _MAX_BATCH:
                        break
                    await asyncio.sleep(0)  # the reports of the RPCs ready now join in
                batch = self._queued[:_MAX_BATCH]
                del self._queued[:_MAX_BATCH]
                await self._send_batch(batch)
        except BaseException as exc:  # cancelled (the loop is closing): so are they
            queued, self._queued = self._queued, []
            for item in queued:
                if not item.future.done():
                    item.future.set_exception(exc)
            raise
        finally:
            if self._queue_loop is loop:  # (not a sender of a loop left behind)
                self._senders -= 1

    async def _send_batch(self, batch: list[_QueuedReport]) -> None:
        """Run ``batch``'s scripts in one pipeline; every future gets its reply or error."""
        try:
            await self._pipelined(batch)
        except BaseException as exc:  # the whole pipeline failed: so did every report
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _pipelined(self, batch: list[_QueuedReport]) -> None:
        """The batch's scripts in one round trip on the reports' connection (no
        transaction: each script is atomic on its own), then one ``WAIT`` when any of
        them needs it."""
        batch = [item for item in batch if not item.future.done()]  # (callers gone)
        if not batch:
            return
        script = self._report_script
        replicas = 0
        if any(item.wait for item in batch):
            replicas = await self._replicas_to_wait_for(batch[0].keys[0])
        timeout_ms = max(1, int(self.wait_timeout * 1000))
        todo = batch
        for _attempt in range(3):
            commands: list[tuple[Any, ...]] = [
                ("EVALSHA", script.sha, len(item.keys), *item.keys, *item.args)
                for item in todo]
            if replicas:
                commands.append(("WAIT", replicas, timeout_ms))
            replies = await self._reports_line(commands)
            acked = replies[-1] if replicas else replicas
            again: list[_QueuedReport] = []
            for item, reply in zip(todo, replies, strict=False):
                if isinstance(reply, redis_errors.NoScriptError):
                    again.append(item)  # the Redis lost its scripts (a restart)
                elif item.future.done():  # the caller was cancelled (the write happened)
                    continue
                elif isinstance(reply, Exception):
                    item.future.set_exception(reply)
                elif item.wait and replicas and isinstance(acked, Exception):
                    item.future.set_exception(acked)
                elif item.wait and int(acked) < replicas:
                    self._auto_checked = -1e9  # maybe the replica is gone: look again
                    item.future.set_exception(StoreUnavailable(
                        f"redis: report was not confirmed by {replicas} replica(s) within "
                        f"{self.wait_timeout:g} s (only {acked}); retry"))
                else:
                    item.future.set_result(reply)
            if not again:
                return
            await self._redis.script_load(script.script)
            todo = again
        raise StoreError("redis error during report: script could not be loaded")

    async def _reports_line(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies of ``commands`` (Redis errors as values), sent in one write on the
        store's own connection for reports (not a redis-py pipeline).

        A pipeline costs redis-py's per-call work (a connection out of the pool and
        back, a retry wrapper, a task per socket write for its timeout, a timer per
        reply) on the one event loop that serves every report; this connection pays one
        timeout for the whole round trip. Like the pool's commands, a round trip that
        fails on a broken connection is tried once more on a fresh one (the scripts
        only ever raise what they record), then the error is the caller's."""
        for attempt in (1, 2):
            line = await self._report_connection()
            try:
                async with asyncio.timeout(self.socket_timeout):
                    if not line.is_connected:
                        # (its own connect: a Sentinel's asks for the master; sending on
                        # a closed connection would connect to its host, not the master)
                        await line.connect()
                    await line.send_packed_command(line.pack_commands(commands),
                                                   check_health=False)
                    replies: list[Any] = []
                    for _ in commands:  # (all are read, or the next round trip reads these)
                        try:
                            replies.append(await line.read_response(timeout=math.inf))
                        except redis_errors.ResponseError as exc:
                            replies.append(exc)
                    return replies
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
                await line.disconnect(nowait=True)  # (its state is unknown now)
                if attempt == 2:
                    if isinstance(exc, TimeoutError):  # (asyncio.timeout's: an OSError)
                        raise redis_errors.TimeoutError(
                            f"no reply within socket_timeout={self.socket_timeout:g} s"
                        ) from None
                    raise
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _report_connection(self) -> Any:
        """The connection ``_reports_line`` uses, made on first use (and again on a new
        event loop: a connection's streams belong to the loop that opened them). It has
        the pool's settings (on Sentinel: it asks the sentinels for the master) but no
        socket timeout of its own: ``_reports_line`` bounds the whole round trip."""
        loop = asyncio.get_running_loop()
        line, line_loop = self._report_line
        if line is None or line_loop is not loop:
            # (a connection of another loop is left to it: closing its transport from
            # here fails once that loop is closed)
            assert not isinstance(self._redis, RedisCluster)  # (they go one by one)
            pool = self._redis.connection_pool
            line = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
            self._report_line = (line, loop)
        return line

    @asynccontextmanager
    async def _backend(self, what: str) -> AsyncIterator[None]:
        """Errors translated; on a cluster, also a slot among the commands in flight."""
        if not self.cluster:
            with _backend_errors(what):
                yield
            return
        if self._in_flight is None:
            self._in_flight = asyncio.Semaphore(self._max_in_flight)
        async with self._in_flight:
            with _backend_errors(what):
                yield

    def job_keys(self, job_id: str) -> list[str]:
        """The job's keys, all in one hash slot: job, progress, decisions, changes, audit."""
        return [f"{self.prefix}:{{{job_id}}}:{part}"
                for part in ("job", "progress", "decisions", "changes", "audit")]

    def keyframe_key(self, job_id: str) -> str:
        """The job's keyframe (a hash), in the job's hash slot."""
        return f"{self.prefix}:{{{job_id}}}:keyframe"

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
            record.incarnation,
            record.run_id,
            *_children_args(record.progress, record.decisions),
        ]
        async with self._backend("create"):
            reply = await self._write(self._create_script, self.job_keys(record.job_id), args,
                                      "create")
            # Also on created=False: a retried create heals a ZADD lost to a crash.
            await self._redis.zadd(self._index, {record.job_id: 0})
        if reply[0] == 1:
            return record.copy(), True
        return _record(record.job_id, reply[1]), False

    async def get(self, job_id: str) -> JobRecord | None:
        async with self._backend("get"):
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
        while len(records) < limit:
            wanted = limit - len(records)
            async with self._backend("list"):
                page = await self._redis.zrangebylex(self._index, low, high, start=0, num=wanted)
            ids = [i.decode() if isinstance(i, bytes) else i for i in page]
            if not ids:
                break
            replies = await self._read_many(ids)
            records += [
                _record(job_id, reply)
                for job_id, reply in zip(ids, replies, strict=True)
                if reply is not None
            ]
            if len(ids) < wanted:
                break
            low = b"(" + ids[-1].encode()
        return records

    async def _read_many(self, ids: Sequence[str]) -> Sequence[Any]:
        """``_READ_SCRIPT``'s reply for each id: one pipeline, or concurrent calls on a
        cluster (each bounded by ``_backend``), where the jobs live on several masters."""
        if isinstance(self._redis, RedisCluster):

            async def read(job_id: str) -> Any:
                async with self._backend("list"):
                    return await self._read_script(keys=self.job_keys(job_id))

            return list(await asyncio.gather(*(read(job_id) for job_id in ids)))
        async with self._backend("list"), self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                await self._read_script(keys=self.job_keys(job_id), client=pipe)
            return list(await pipe.execute())

    async def delete(self, job_id: str, audit_entry: dict[str, Any] | None = None, *,
                     finished_before: float | None = None) -> bool:
        """Remove every key of the job but its audit list; see ``JobStore.delete``."""
        entry = canonical_json(audit_entry) if audit_entry is not None else ""
        before = repr(float(finished_before)) if finished_before is not None else ""
        async with self._backend("delete"):
            existed = await self._write(
                self._delete_script, [*self.job_keys(job_id), self.keyframe_key(job_id)],
                [entry, before], "delete")
            if existed or finished_before is None:  # (also heals an index entry left over)
                await self._redis.zrem(self._index, job_id)
        return bool(existed)

    async def count(self, prefix: str = "", limit: int = 1000) -> int:
        """How many ids the job index holds under ``prefix`` (at most ``limit``)."""
        low = b"[" + prefix.encode() if prefix else b"-"
        high = b"[" + prefix.encode() + b"\xff" if prefix else b"+"
        async with self._backend("count"):
            n = await self._redis.zlexcount(self._index, low, high)
        return min(int(n), limit)

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
        """Record ranks' progress in one script call; see ``JobStore.report``."""
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
            str(int(known_changes)),
            "0" if incarnation is None else "1",
            incarnation or "",
            repr(float(finished_at)),
            str(int(held_until)),
        ]
        for other, done in (more_progress or {}).items():
            args += [str(int(other)), str(int(done))]
        keys = self._report_keys.get(job_id)
        if keys is None:  # (every report of a job has the same keys: built once)
            if len(self._report_keys) >= 4096:
                self._report_keys.clear()
            keys = self._report_keys[job_id] = self.job_keys(job_id)
        # WAIT only where a plan is handed out or a decision recorded: progress alone
        # lost to a failover is reported again by the rank.
        wait = issue_until > 0 or decision is not None
        if not self.cluster:
            with _backend_errors("report"):  # (``_backend`` less its cluster bound)
                reply = await self._queue_report(keys, args, wait)
        else:
            async with self._backend("report"):
                if wait:  # (a cluster's jobs live on several masters: one call each)
                    reply = await self._write(self._report_script, keys, args, "report")
                else:
                    reply = await self._report_script(keys=keys, args=args)
        status = reply[0]
        if status == "missing":
            raise JobNotFound(job_id)
        if status == "incarnation":
            raise IncarnationMismatch(job_id, incarnation or "", reply[1])
        if status == "stale":
            raise StaleGeneration(job_id, generation, int(reply[1]))
        if status == "rank":
            raise RankOutOfRange(job_id, int(reply[2]), int(reply[1]))
        return _reported(job_id, reply[1])

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
        """A rank of ``run_id`` attaches, in one script call; see ``JobStore.join``."""
        args = [run_id, str(int(world_size)), str(int(rank)), str(int(issue_until)),
                canonical_json(audit_entry) if audit_entry is not None else ""]
        async with self._backend("join"):
            reply = await self._write(self._join_script, self.job_keys(job_id), args,
                                      "join")
        status = reply[0]
        if status == "missing":
            raise JobNotFound(job_id)
        if status == "world":
            raise WorldSizeConflict(job_id, world_size, int(reply[1]))
        if status == "rank":
            raise RankOutOfRange(job_id, rank, int(reply[1]))
        return _record(job_id, reply[1]), status

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
        args = [
            canonical_json(spec),
            spec_hash,
            str(int(min_generation)),
            state_hash,
            str(int(world_size)),
            repr(float(created_at)),
            str(max(max((int(it) for it in progress.values()), default=0), int(issue_until))),
            canonical_json(audit_entry) if audit_entry is not None else "",
            run_id,
            incarnation,
            str(len(changes or [])),
            *(canonical_json(o) for o in changes or []),
            str(len(audit_entries or [])),
            *(canonical_json(e) for e in audit_entries or []),
            *_children_args(progress, decisions),
        ]
        async with self._backend("load_state"):
            reply = await self._write(self._load_state_script, self.job_keys(job_id), args,
                                      "load_state")
            await self._redis.zadd(self._index, {job_id: 0})
        return _record(job_id, reply[1]), reply[0] == 1

    async def reschedule(
        self,
        job_id: str,
        *,
        generation: int,
        expected_changes: int,
        change: dict[str, Any],
        audit_entry: dict[str, Any],
    ) -> JobRecord:
        """Append a change and its audit entry in one script; see ``JobStore.reschedule``."""
        start = int(change["from_iteration"])
        args = [str(int(generation)), str(int(expected_changes)), str(start),
                canonical_json(change), canonical_json(audit_entry)]
        async with self._backend("reschedule"):
            reply = await self._write(self._reschedule_script, self.job_keys(job_id), args,
                                      "reschedule")
        status = reply[0]
        if status == "missing":
            raise JobNotFound(job_id)
        if status == "stale":
            raise StaleGeneration(job_id, generation, int(reply[1]))
        if status == "conflict":
            raise ChangeConflict(job_id, expected_changes, int(reply[1]))
        if status == "early":
            raise TooEarly(job_id, start, int(reply[1]))
        return _record(job_id, reply[1])

    async def save_keyframe(self, job_id: str, keyframe: Keyframe) -> bool:
        """Keep the job's keyframe in one script; see ``JobStore.save_keyframe``. No
        ``WAIT``: a keyframe a failover loses only costs a longer replay."""
        args = [keyframe.incarnation, str(int(keyframe.generation)),
                str(int(keyframe.iteration)), keyframe.data]
        async with self._backend("save_keyframe"):
            saved = await self._save_keyframe_script(
                keys=[self.job_keys(job_id)[0], self.keyframe_key(job_id)], args=args)
        return bool(saved)

    async def keyframe(self, job_id: str) -> Keyframe | None:
        async with self._backend("keyframe"):
            kept = await self._redis.hgetall(self.keyframe_key(job_id))
        if not kept:
            return None
        return Keyframe(str(kept["incarnation"]), int(kept["generation"]),
                        int(kept["iteration"]), str(kept["data"]))

    async def append_audit(self, job_id: str, entry: dict[str, Any]) -> None:
        async with self._backend("append_audit"):
            await self._redis.rpush(self.job_keys(job_id)[4], canonical_json(entry))

    async def audit(self, job_id: str) -> JsonObjects:
        async with self._backend("audit"):
            entries = await self._redis.lrange(self.job_keys(job_id)[4], 0, -1)
        return [json.loads(e) for e in entries]

    async def close(self) -> None:
        """Close the connection pool (a later call would open new connections)."""
        async with self._backend("close"):
            line, _loop = self._report_line
            if line is not None:
                self._report_line = (None, None)
                await line.disconnect(nowait=True)
            if self.sentinel is not None:
                await self.sentinel.aclose()
            if isinstance(self._redis, RedisCluster):
                await self._redis.aclose()
            else:  # the pool was passed in, so the client would leave it open
                await self._redis.aclose(close_connection_pool=True)
