"""Bounded work per request: the cost budget, pages and strides of ``GetValues`` and
``PreviewSchedule``, and job-scoped listings that read only the caller's jobs.

A page of values costs, in *cells* (one double of the reply, or one iteration
replayed)::

    cost = points * groups * params + replay + (points - 1) * (stride - 1)

``points`` are the iterations it returns (every ``stride``-th one of the request's
``[start, stop)``), ``replay`` the iterations replayed before its first point: for a
job, the distance from the nearest replay state its schedule holds
(``Schedule.replay_distance``), or from the one its token carries when that is
nearer; for a preview, which no stored state backs, the first
point itself on its first page (it replays from iteration 0), and at most ``stride``
on the later ones (each token carries the replay state where its page stopped, and
the next page continues from it). The last term is the replay between the points of a
stride. The server cuts a page where the budget
(``--max-values-cells``; by default a quarter of the gRPC message limit in doubles, so
a reply stays well under it) runs out, or where the caller's deadline nears, and
hands out ``next_page_token``; a page that cannot hold even one point is
RESOURCE_EXHAUSTED, naming the budget and what to ask instead.

Page tokens are opaque to callers but not secret: one names the next point and is
bound to its request (job or spec, range, stride) and, for a job, to the job state the
values came from (incarnation, generation, changes), so the pages of one answer are
one curve. A token that does not decode, or belongs to another request, is
INVALID_ARGUMENT naming ``page_token``; one of a job that changed since (a resume or a
change) is too, with the advice to start again from the first page. A token with its
next point edited is no more than the same request with another start, which any
caller may send, so a checksum (against garbling) is all it needs. A token also
carries the replay state where its page stopped (compressed; left out when it would
make the token longer than ``MAX_CARRIED_LENGTH``, and then the next page replays as
without one). A preview continues from it; a job's server only when it holds no state
near the page (a cold replica), and then in a schedule of the request's own, never
the job's cached one, which its ranks' plans come from. So a forged state changes
only the forger's own reply: its structure is checked (INVALID_ARGUMENT on
``page_token`` when it does not fit the schedule), its numbers only for range.

The values are computed in a worker thread that checks the deadline between chunks of
bounded size and stops when it passes (or when the caller goes away), releasing the
job's lock between chunks so the job's ranks are served meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..auth import Principal
from ..errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from ..schedules import GroupValues, JobSpec
from ..schedules.replay import Decisions
from ..schedules.reschedule import Schedule
from ..store import JobRecord, JobStore
from ..store.base import canonical_json
from .views import Plan, plan_of

#: doubles in a reply by default: 2 MiB, half of gRPC's default 4 MiB message limit.
DEFAULT_MAX_VALUES_CELLS = 262_144
#: iterations computed between two deadline checks (a chunk of values, or a walk step).
CHUNK_ITERATIONS = 8192
#: up to this stride a page reads consecutive values and keeps every stride-th; above
#: it, one point at a time (each continues from the last one's replay state).
SLICE_STRIDE = 16
#: a job's page spanning at most this many iterations, this close to a kept replay
#: state, is computed on the event loop (less than a thread hop costs).
INLINE_ITERATIONS = 512
#: a page stops computing (and is cut there) after this share of the caller's time, so
#: the reply still arrives before the deadline.
DEADLINE_SHARE = 0.75
#: a page token's length at most (one carrying a replay state is the longest).
MAX_TOKEN_LENGTH = 65_536
#: a token carrying a replay state longer than this carries none instead.
MAX_CARRIED_LENGTH = 48 * 1024
#: a compressed token's bytes decompress to at most this many.
MAX_PAYLOAD = 1 << 20
_COMPRESSED = b"\x00z"  # (a plain token's bytes start with "{")
_TOKEN_VERSION = 1


@dataclass(frozen=True)
class Page(Plan):
    """A plan whose values are for iterations ``start + i * stride``; more follow from
    ``next_page_token`` (empty on the last page)."""

    stride: int = 1
    next_page_token: str = ""


@dataclass(frozen=True)
class Window:
    """The iterations a request asks for: every ``stride``-th of ``[start, stop)``."""

    start: int
    stop: int
    stride: int

    def points_from(self, first: int) -> int:
        """How many of the window's iterations are ``>= first`` (a point of it)."""
        return max(0, -(-(self.stop - first) // self.stride))


def window(start: int, stop: int, stride: int, max_iters: int) -> Window:
    """A request's range, checked: ``[start, stop)`` inside ``[0, max_iters]`` (``stop``
    0: to the end, ``max_iters`` included), ``stride`` >= 1 (0: 1)."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
        raise InvalidArgument(f"must be >= 1 (0 means 1), got {stride!r}", field="stride")
    stop = min(stop or max_iters + 1, max_iters + 1)
    if not 0 <= start <= max_iters:
        raise InvalidArgument(f"must be in [0, {max_iters}], got {start}",
                              field="start_iteration")
    if stop <= start:
        raise InvalidArgument(f"must be after start_iteration ({start}), got {stop}",
                              field="stop_iteration")
    return Window(start, stop, stride or 1)


# -- page tokens --------------------------------------------------------------------------
def binding(kind: str, subject: Any, start: int, stop: int, stride: int) -> str:
    """What a token is for: the kind of request, its subject (job id, or the spec and
    decisions of a preview) and its range as asked (``stop`` 0 stays 0, so a job
    whose length changed meanwhile is told its token is stale, not of another request)."""
    text = canonical_json([kind, subject, start, stop, stride or 1])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def job_state(record: JobRecord) -> str:
    """The job state a job's values come from: a token of another one is stale."""
    return f"{record.incarnation}:{record.generation}:{record.num_changes}"


def _checksum(body: bytes) -> str:
    return hashlib.sha256(b"paramsched page token\0" + body).hexdigest()[:16]


def encode_token(bound: str, state: str, next_point: int,
                 keyframe: Mapping[str, Any] | None = None,
                 max_carried: int | None = None) -> str:
    """The token of the page from ``next_point``; with ``keyframe`` (the replay state
    where the last page stopped, ``Schedule.keyframe``) compressed in, so the next page
    can continue from it instead of replaying from iteration 0. A state too large for
    ``MAX_CARRIED_LENGTH`` is left out: the next page then replays, as without one."""
    fields: dict[str, Any] = {"v": _TOKEN_VERSION, "r": bound, "s": state, "n": next_point}
    limit = MAX_CARRIED_LENGTH if max_carried is None else max_carried
    if keyframe is not None:
        body = canonical_json({**fields, "k": keyframe}).encode()
        # (doubles in JSON compress about 2:1 at best: a far larger state is not tried)
        if len(body) <= 4 * limit:
            token = _encoded(_COMPRESSED + zlib.compress(body, 9))
            if len(token) <= limit:
                return token
    return _encoded(canonical_json(fields).encode())


def _encoded(head: bytes) -> str:
    """``head`` and its checksum, in URL-safe base64. The checksum covers the bytes as
    sent (compressed ones too: deflate ignores the spare bits of its last byte, so a
    checksum of the inflated body would let another spelling of the token pass)."""
    raw = head + b"." + _checksum(head).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _body(head: bytes) -> bytes | None:
    """A checked token's JSON body: as sent, or inflated (at most ``MAX_PAYLOAD`` bytes,
    so a small token cannot make the server inflate a large one)."""
    if not head.startswith(_COMPRESSED):
        return head
    inflate = zlib.decompressobj()
    try:
        body = inflate.decompress(head[len(_COMPRESSED):], MAX_PAYLOAD)
    except zlib.error:
        return None
    if inflate.unconsumed_tail or not inflate.eof or inflate.unused_data:
        return None
    return body


def read_token(token: str, request: Window, bound: str,
               state: str = "") -> tuple[int, dict[str, Any] | None]:
    """The page's first iteration (the request's start, or the one its token names)
    and the replay state the token carries (None: none), not yet checked against the
    schedule (``seed_carried`` does that)."""
    if not token:
        return request.start, None
    bad = "is not a page token of this server (garbled, or not a next_page_token)"
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidArgument(bad, field="page_token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        # Exactly the encoding we write: no other spelling of the same bytes passes.
        exact = base64.urlsafe_b64encode(raw).decode().rstrip("=") == token
        head, _, checksum = raw.rpartition(b".")
        body = _body(head) if exact and checksum.decode() == _checksum(head) else None
        data = json.loads(body) if body else None
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        data = None
    if not isinstance(data, dict) or data.get("v") != _TOKEN_VERSION or set(data) not in (
            {"v", "r", "s", "n"}, {"v", "r", "s", "n", "k"}):
        raise InvalidArgument(bad, field="page_token")
    if data["r"] != bound:
        raise InvalidArgument(
            "belongs to another request: send the request that returned it again, with "
            "the same job or spec, start_iteration, stop_iteration and stride",
            field="page_token")
    if data["s"] != state:
        raise InvalidArgument(
            "is stale: the job was resumed, started over or changed since the first page "
            "(its values may differ now); ask again from the first page, without "
            "page_token", field="page_token")
    point = data["n"]
    if (isinstance(point, bool) or not isinstance(point, int)
            or not request.start < point < request.stop
            or (point - request.start) % request.stride):
        raise InvalidArgument(bad, field="page_token")
    keyframe = data.get("k")
    if keyframe is not None and not isinstance(keyframe, dict):
        raise InvalidArgument(bad, field="page_token")
    return point, keyframe


#: the largest integer a carried state may hold: exact as a double, so the engine's
#: float arithmetic on it cannot overflow (a step count or a plateau's epoch count).
MAX_STATE_INTEGER = 2**53


def _check_numbers(data: Any) -> None:
    """ValueError unless every integer in ``data`` is within ``MAX_STATE_INTEGER``."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and \
                abs(item) > MAX_STATE_INTEGER:
            raise ValueError(f"an integer of the replay state is beyond 2**53 "
                             f"({str(item)[:24]}...)")


def seed_carried(schedule: Schedule, keyframe: Mapping[str, Any], request: Window,
                 first: int) -> None:
    """Keep the replay state a token carries in ``schedule`` (a preview's, or one
    built for this request: never a job's cached one): one from after the previous
    page's last point, in ``[first - stride, first)``. Its structure is checked
    (``Schedule.seed``), its integers for range; its other numbers are not (a forged
    state only changes the forger's own reply), and the replay from it to ``first``,
    at most ``stride`` iterations, is counted by the budget as for any page."""
    try:
        _check_numbers(keyframe)
        at = keyframe.get("iteration")
        if isinstance(at, bool) or not isinstance(at, int) or not (
                first - request.stride <= at < first):
            raise ValueError(f"the replay state must be at an iteration in "
                             f"[{first - request.stride}, {first}), got {at!r}")
        schedule.seed(keyframe)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise InvalidArgument(f"carries a replay state that does not fit this request "
                              f"({exc}); ask again from the first page, without "
                              f"page_token", field="page_token") from None


# -- the budget ---------------------------------------------------------------------------
def affordable(budget: int, width: int, replay: int, points: int, *, first: int,
               stride: int, preview: bool) -> int:
    """The points a page from ``first`` may hold: ``points`` if they fit the budget,
    fewer if not; RESOURCE_EXHAUSTED when not even one does. The first point costs its
    row and the ``replay`` to reach it, each further one its row and the ``stride - 1``
    iterations replayed since the last one (so no page replays much past its budget,
    whatever its stride)."""
    width = max(1, width)
    if budget - replay >= width:
        return min(points, 1 + (budget - replay - width) // (width + stride - 1))
    what = "PreviewSchedule" if preview else "GetValues"
    if width > budget:
        advice = ("this server cannot return even one iteration of this schedule; its "
                  "operator can raise --max-values-cells")
    elif preview:
        advice = ("a preview's first page replays from iteration 0, so far iterations "
                  "cost their replay (later pages continue from their token): ask "
                  "from start_iteration 0 and follow next_page_token, preview fewer "
                  "iterations (a smaller stop_iteration), or create the job and use "
                  "GetValues, whose pages continue from the job's replay states")
    else:
        advice = ("no replay state of the job is nearer: ask from an earlier "
                  f"start_iteration, with a stride of at most {budget - width} (pages "
                  "continue where the last one stopped)")
    raise ResourceExhausted(
        f"{what} from iteration {first} costs {width} values per iteration (groups x "
        f"params) plus {replay} iterations of replay to reach it, over the budget "
        f"max_values_cells={budget} (server option --max-values-cells); {advice}",
        budget="max_values_cells")


# -- the work -----------------------------------------------------------------------------
class Work:
    """The caller's time, for a computation in a worker thread: ``cut`` says whether
    to stop with what is done (past ``DEADLINE_SHARE`` of the time) and raises when
    the deadline passed or the caller went away (``cancel``)."""

    def __init__(self, deadline: float | None) -> None:
        now = time.monotonic()
        self.deadline = deadline
        self.soft = None if deadline is None else now + DEADLINE_SHARE * (deadline - now)
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def cut(self, have_values: bool) -> bool:
        if self._cancelled.is_set():
            raise DeadlineExceeded("the caller went away; the values were not computed")
        if self.deadline is None or self.soft is None:
            return False
        now = time.monotonic()
        if now >= self.deadline:
            raise DeadlineExceeded("the caller's deadline passed before the values were "
                                   "computed; ask again with a longer deadline or a "
                                   "shorter range")
        return have_values and now >= self.soft


ValuesRange = Callable[[int, int], list[GroupValues]]


def compute(values_range: ValuesRange, request: Window, first: int, count: int,
            work: Work, *, replay_from: int = 0) -> tuple[list[GroupValues], int | None]:
    """Up to ``count`` points of ``request`` from ``first``: (rows, the first iteration
    whose values wait on a validation decision, if the rows stop there).

    ``values_range(a, b)`` gives the values of ``[a, b)``, fewer when a decision is
    pending. No call spans much more than ``CHUNK_ITERATIONS`` iterations of replay, so
    the deadline is checked that often: the replay from ``replay_from`` (where the
    nearest replay state is) to ``first``, and between the points of a large stride,
    goes in steps.
    """
    stride = request.stride
    rows: list[GroupValues] = []

    def missing_after(known: int, t: int) -> int:
        """The first iteration in ``(known, t]`` whose values wait on a decision, given
        that those of ``known`` do not and those of ``t`` do."""
        return known + 1 + len(values_range(known + 1, t))

    def walk(position: int, target: int) -> tuple[str, int]:
        """Replay from ``position`` (its values exist) towards ``target`` in steps:
        ("ok", the last iteration reached), ("cut", ...) for the deadline, or
        ("pending", the first iteration whose values wait on a decision)."""
        known, step = position, position + CHUNK_ITERATIONS
        while step < target:
            if work.cut(bool(rows)):
                return "cut", known
            if not values_range(step, step + 1):
                return "pending", missing_after(known, step)
            known, step = step, step + CHUNK_ITERATIONS
        return "ok", known

    status, known = walk(replay_from, first)  # never "cut": no rows yet
    if status == "pending":
        return rows, known
    t = first
    while len(rows) < count:
        if work.cut(bool(rows)):
            break
        if stride <= SLICE_STRIDE:
            n = min(count - len(rows), max(1, CHUNK_ITERATIONS // stride))
            span = (n - 1) * stride + 1
            got = values_range(t, t + span)
            rows.extend(got[::stride])
            if len(got) < span:
                if got or rows or known >= t:
                    return rows, t + len(got)
                return rows, missing_after(known, t)  # it may be before first
            t += n * stride
            continue
        if rows:
            status, known = walk(t - stride, t)
            if status == "cut":
                break
            if status == "pending":
                return rows, known
        got = values_range(t, t + 1)
        if not got:
            return rows, missing_after(known, t) if known < t else t
        rows.extend(got)
        t += stride
    return rows, None


async def run(work: Work, fn: Callable[[], Any],
              offload: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None) -> Any:
    """``fn`` in a worker thread (``offload``: the service's bounded pool); if the
    caller goes away meanwhile, ``work`` tells the thread to stop at its next check."""
    try:
        return await (offload(fn) if offload is not None else asyncio.to_thread(fn))
    except asyncio.CancelledError:
        work.cancel()
        raise


def follows(request: Window, first: int, rows: list[GroupValues],
            missing: int | None) -> bool:
    """Whether a page of ``rows`` from ``first`` is followed by another."""
    return missing is None and bool(rows) and len(rows) < request.points_from(first)


def keyframe_to_carry(schedule: Schedule, request: Window, first: int,
                      rows: list[GroupValues], missing: int | None, decisions: Decisions,
                      reached: int) -> dict[str, Any] | None:
    """The replay state for a page's token to carry: the one at ``reached``,
    the furthest iteration the page computed (its last point, or further towards the
    next one when a large stride's replay was cut). None when no page follows, when
    the values there wait on a decision, or when that state is no longer kept (its
    replay would be unbounded work after the page's deadline checks)."""
    if not follows(request, first, rows, missing):
        return None
    last = first + (len(rows) - 1) * request.stride
    at = min(max(reached, last), last + request.stride - 1)
    if schedule.replay_distance(at) > CHUNK_ITERATIONS:
        return None
    return schedule.keyframe(at, decisions)


def finish(spec: JobSpec, schedule: Schedule, request: Window, first: int,
           rows: list[GroupValues], missing: int | None, bound: str, state: str,
           generation: int, incarnation: str = "", *,
           keyframe: Mapping[str, Any] | None = None, max_carried: int | None = None) -> Page:
    """The page of ``rows`` from ``first``; ``missing``: the iteration where the values
    wait on a validation decision (then ``waits_for_epoch`` says which, as in a plan,
    and no page follows). ``keyframe``: the replay state the token carries."""
    at = first if missing is None else missing
    base = plan_of(spec, schedule, at, at if missing is None else at + 1, [], generation,
                   incarnation)
    token = ""
    if follows(request, first, rows, missing):
        token = encode_token(bound, state, first + len(rows) * request.stride, keyframe,
                             max_carried)
    return Page(first, base.params, base.num_groups, rows, base.generation,
                base.waits_for_epoch, base.max_iters, base.incarnation,
                stride=request.stride, next_page_token=token)


# -- job-scoped listings ---------------------------------------------------------------
def scope_sources(principal: Principal, prefix: str) -> tuple[list[str], list[str]]:
    """What a job-scoped caller's listing of ``prefix`` reads: (id prefixes, exact ids),
    each within both the token's scope and ``prefix``, none covered by another."""
    prefixes: list[str] = []
    for own in principal.job_prefixes:
        if own.startswith(prefix):
            prefixes.append(own)
        elif prefix.startswith(own):
            prefixes.append(prefix)
    kept = sorted(set(prefixes))
    prefixes = [p for p in kept if not any(p != q and p.startswith(q) for q in kept)]
    ids = sorted(j for j in principal.jobs
                 if j.startswith(prefix) and not j.startswith(tuple(prefixes)))
    return prefixes, ids


async def scoped_list(store: JobStore, principal: Principal, prefix: str, after: str,
                      limit: int) -> list[JobRecord]:
    """The first ``limit`` jobs after ``after`` (by id) that ``principal`` may see:
    one store listing per token prefix and one read per listed id, never a scan of
    other jobs, so a job-scoped listing costs O(page) whatever the store holds."""
    prefixes, ids = scope_sources(principal, prefix)
    found: dict[str, JobRecord] = {}
    for own in prefixes:
        for record in await store.list(own, after, limit):
            found[record.job_id] = record
    wanted = [j for j in ids if j > after]
    # Ids in order, a page's worth at a time, until enough exist (absent ones are skipped).
    for begin in range(0, len(wanted), limit):
        batch: Sequence[str] = wanted[begin:begin + limit]
        records = await asyncio.gather(*(store.get(j) for j in batch))
        found.update((r.job_id, r) for r in records if r is not None)
        if sum(1 for j in wanted[:begin + limit] if j in found) >= limit:
            break
    return [found[j] for j in sorted(found)][:limit]
