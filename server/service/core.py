"""The domain service: jobs, progress reports, plans, checkpoints. No gRPC types here.

A job's values at iteration t are a pure function of (spec, generation, decisions),
so every rank gets the same values whatever the order, timing or duplication of their
reports, and any server process can answer for any job. The store holds that record;
this process only caches parsed specs and schedules.

Immutability: a plan never runs past an epoch end whose ReduceOnPlateau decision is
not recorded yet, and a decision is written once (the store's first writer wins), so a
value handed out for (job, generation, iteration) never changes.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

from ..auth import current_principal
from ..errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from ..schedules import (
    ConfigError,
    DecisionsChanged,
    GroupValues,
    JobSpec,
    MetricsError,
)
from ..schedules.reschedule import Schedule, build_change, resolved
from ..store import (
    ChangeConflict,
    IncarnationMismatch,
    JobNotFound,
    JobRecord,
    JobState,
    JobStore,
    Keyframe,
    RankOutOfRange,
    StaleGeneration,
    StoreError,
    StoreUnavailable,
    TooEarly,
    WorldSizeConflict,
    canonical_json,
    content_hash,
)
from ..store.base import JsonObjects
from . import pages, previews
from .changes import check_guardrails, compare
from .checkpoints import (
    ACTION_PATTERN,
    RUN_ID_PATTERN,
    CheckpointState,
    build_state,
    check_change_data,
    parse_state,
)
from .firstplans import FirstPlans
from .groupcommit import DEFAULT_COMMIT_DELAY, GroupCommit
from .inputs import (
    Limits,
    check_job_id,
    config_error,
    parse_spec,
    spec_difference,
)
from .jobcache import JobCache
from .pages import DEFAULT_MAX_VALUES_CELLS, Page
from .previews import PreviewRequest
from .sharedplans import Key as SharedKey
from .sharedplans import SharedPlans
from .signing import StateKeys, check_horizon, sign_horizon
from .views import (
    Attachment,
    JobView,
    LoadedJob,
    NoEvents,
    Plan,
    RescheduleResult,
    ServiceEvents,
    plan_of,
)

log = logging.getLogger("paramsched.jobs")

_T = TypeVar("_T")


def new_incarnation() -> str:
    """A job incarnation: random, so a job created again under an old id never shares it."""
    return secrets.token_hex(8)


@contextmanager
def store_errors() -> Iterator[None]:
    """The store is down or overloaded: UNAVAILABLE (clients retry with backoff)."""
    try:
        yield
    except StoreUnavailable as exc:
        raise Unavailable(f"job store unavailable: {exc}") from None


class SchedulerService:
    """Jobs and their schedules, over any JobStore."""

    def __init__(
        self,
        store: JobStore,
        *,
        default_plan_size: int = 256,
        max_plan_size: int = 4096,
        cache_size: int = 256,
        cache_bytes: int = 256 * 2**20,
        keyframe_every: int = 256,
        max_plan_cells: int = 2**18,
        compute_workers: int = 2,
        max_compute_waiting: int = 64,
        preview_processes: bool = True,
        max_values_cells: int = DEFAULT_MAX_VALUES_CELLS,
        limits: Limits | None = None,
        events: ServiceEvents | None = None,
        state_keys: StateKeys | None = None,
        auth_enabled: bool = False,
        commit_delay: float = DEFAULT_COMMIT_DELAY,
    ) -> None:
        self.store = store
        # A job's concurrent reports: one write (``commit_delay``: see groupcommit).
        self._reports = GroupCommit(store, delay=commit_delay)
        self._shared_plans = SharedPlans()  # a job's ranks ask for the same plans
        # Checkpoint states are signed with these; with auth on, only signed ones load.
        self.state_keys = state_keys
        self.auth_enabled = auth_enabled
        self.limits = limits or Limits()
        self.events: ServiceEvents = events or NoEvents()
        self.default_plan_size = default_plan_size
        self.max_plan_size = max_plan_size
        self.cache_size = cache_size
        # A plan handed to a rank that ends this far past the job's stored keyframe
        # stores its last state as the new one (one write per interval, off the reply).
        self.keyframe_every = keyframe_every
        self._background: set[asyncio.Task[None]] = set()
        # New jobs' first plans by spec: a spec computed before is copied, not replayed.
        self._first_plan_copies = FirstPlans(max_entries=cache_size)
        # A plan holds at most this many values (iterations x groups x params, or x
        # schedulers when more): a job with many groups or schedulers gets shorter plans,
        # so no plan costs more than a bounded replay.
        self.max_plan_cells = max_plan_cells
        # Long computations run in worker threads, a few at a time (first come, first
        # served), so replays never starve the event loop; past ``max_compute_waiting``
        # queued ones the server reports itself not ready (``overloaded``).
        self.compute_workers = compute_workers
        self.max_compute_waiting = max_compute_waiting
        self._compute: asyncio.Semaphore | None = None
        # Previews run in worker processes (``previews``); off, in worker threads.
        self.preview_processes = preview_processes
        self.compute_waiting = 0
        # The cost budget of one GetValues / PreviewSchedule page (see pages.py).
        self.max_values_cells = max_values_cells
        self._jobs = JobCache(cache_size, cache_bytes)
        self._specs: OrderedDict[str, JobSpec] = OrderedDict()

    # -- long computations -----------------------------------------------------------
    async def offload(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` in a worker thread once one of ``compute_workers`` slots is free."""
        if self._compute is None:
            self._compute = asyncio.Semaphore(self.compute_workers)
        self.compute_waiting += 1
        try:
            await self._compute.acquire()
        finally:
            self.compute_waiting -= 1
        try:
            return await asyncio.to_thread(fn)
        finally:
            self._compute.release()

    def overloaded(self) -> bool:
        """Whether more long computations wait than the server should queue."""
        return self.compute_waiting > self.max_compute_waiting

    async def _parsed(self, spec_data: Mapping[str, Any]) -> JobSpec:
        """``parse_spec``, off the event loop for a big spec (validating 64 schedulers
        over 256 groups takes a while): the other requests go on meanwhile."""
        configs, groups = spec_data.get("param_scheduler"), spec_data.get("initial_values")
        size = (len(configs) if isinstance(configs, list) else 1) * (
            len(groups) if isinstance(groups, list) else 1)
        if size <= 256:
            return parse_spec(spec_data, limits=self.limits)
        return await self.offload(lambda: parse_spec(spec_data, limits=self.limits))

    def _plan_cells_cap(self, spec: JobSpec, params: int) -> int:
        """The most iterations a plan of ``spec`` may hold under ``max_plan_cells``: its
        values, or its replay work (every scheduler steps every group each iteration)
        when the job has more schedulers than params."""
        per_iteration = spec.num_groups * max(params, len(spec.schedulers))
        return max(1, self.max_plan_cells // max(1, per_iteration))

    # -- caches -------------------------------------------------------------------
    def _spec_for(self, record: JobRecord) -> JobSpec:
        spec = self._specs.get(record.spec_hash)
        if spec is None:
            spec = parse_spec(record.spec, prefix="stored spec")
            self._specs[record.spec_hash] = spec
            if len(self._specs) > self.cache_size:
                self._specs.popitem(last=False)
        else:
            self._specs.move_to_end(record.spec_hash)
        return spec

    async def _load(self, record: JobRecord, prebuilt: Schedule | None = None) -> LoadedJob:
        """The job's cached entry, built (parsed spec, schedule with its changes) on a
        miss: in a worker for a big job, whose build steps every scheduler of every group.
        ``prebuilt``: the new job's schedule that attach already computed its first plan on."""
        entry = self._jobs.get(record.job_id)
        if (
            entry is not None
            and entry.incarnation == record.incarnation
            and entry.spec_hash == record.spec_hash
            and entry.generation == record.generation
            and entry.num_changes == record.num_changes
        ):
            self._jobs.touch(record.job_id)
            return entry
        changes = list(record.changes)
        cached = self._specs.get(record.spec_hash)
        big = cached is None or cached.num_groups * max(1, len(cached.schedulers)) > 256

        def build() -> LoadedJob:
            spec = cached or parse_spec(record.spec, prefix="stored spec")
            return LoadedJob(record.incarnation, record.spec_hash, record.generation,
                             record.num_changes, spec,
                             self._schedule(spec, changes, record), changes)

        if prebuilt is not None and not changes:
            entry = LoadedJob(record.incarnation, record.spec_hash, record.generation, 0,
                              prebuilt.spec, prebuilt, changes)
        else:
            entry = await self.offload(build) if big else build()
        self._specs[record.spec_hash] = entry.spec
        self._specs.move_to_end(record.spec_hash)
        if len(self._specs) > self.cache_size:
            self._specs.popitem(last=False)
        entry.frontier = record.issued_until
        self._jobs.put(record.job_id, entry)
        return entry

    @property
    def cache_bytes(self) -> int:
        return self._jobs.max_bytes

    @cache_bytes.setter
    def cache_bytes(self, value: int) -> None:
        self._jobs.max_bytes = value

    def cache_nbytes(self) -> int:
        """About the memory the job cache holds (as last counted)."""
        return self._jobs.nbytes

    async def _warm(self, entry: LoadedJob, record: JobState) -> None:
        """Seed a newly loaded job from its stored keyframe (once), so it continues near
        the frontier instead of replaying from iteration 0."""
        if entry.warmed:
            return
        async with entry.warming:
            if entry.warmed:
                return
            with store_errors():
                kept = await self.store.keyframe(record.job_id)
            if kept is not None and (kept.incarnation, kept.generation) == (
                    entry.incarnation, entry.generation):
                try:
                    data = json.loads(kept.data)
                    with entry.lock:
                        entry.durable = entry.schedule.seed(data)
                except (ValueError, TypeError) as exc:  # written by another version, say
                    log.warning("stored keyframe of job %r ignored: %s", record.job_id, exc)
            entry.warmed = True

    def _keep_keyframe(self, job_id: str, entry: LoadedJob, keyframe: dict[str, Any]) -> None:
        """Store ``keyframe`` in the background; a failure only costs a longer replay."""
        iteration = int(keyframe["iteration"])
        if iteration <= entry.durable:
            return
        entry.durable = iteration
        kept = Keyframe(entry.incarnation, entry.generation, iteration,
                        canonical_json(keyframe))

        async def save() -> None:
            try:
                await self.store.save_keyframe(job_id, kept)
            except StoreError as exc:
                log.debug("keyframe of job %r not stored: %s", job_id, exc)

        self._in_background(save())

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` after the reply, kept until done (tests and shutdown drain it)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    def _schedule(spec: JobSpec, changes: list[dict[str, Any]], record: JobState) -> Schedule:
        return Schedule.from_changes(spec, changes, record.decisions, where="stored changes")

    def _forget(self, job_id: str) -> None:
        self._jobs.pop(job_id)

    # -- store access with error mapping ------------------------------------------
    async def _get_record(self, job_id: str) -> JobRecord:
        with store_errors():
            record = await self.store.get(job_id)
        if record is None:
            raise NotFound(f"job {job_id!r} does not exist")
        return record

    def _plan_size(self, plan_size: int) -> int:
        if plan_size < 0:
            raise InvalidArgument(f"must be >= 0, got {plan_size}", field="plan_size")
        return min(plan_size or self.default_plan_size, self.max_plan_size)

    async def _plan(self, entry: LoadedJob, record: JobState, start: int, stop: int, *,
                    frontier: bool = False, held: int = 0) -> Plan:
        """The plan for [start, stop): computed inline when cheap (near a keyframe or a
        recent query), else in a worker thread, so a long replay never stalls the other
        jobs' reports or the health checks. ``frontier``: a plan handed to a rank, whose
        end may become the job's stored keyframe. ``held``: the rank holds the values
        below it (``skip_held``), so the plan starts there and continues the rank's."""
        schedule = entry.schedule
        stop = min(stop, schedule.max_iters + 1,
                   start + self._plan_cells_cap(entry.spec, len(schedule.params)))
        if start > schedule.max_iters:
            raise InvalidArgument(
                f"iteration {start} is past the end of training ({schedule.max_iters})",
                field="iteration")
        reported, start = start, min(max(start, held), stop)
        key: SharedKey | None = None
        if frontier:  # the job's other ranks ask for the same plan: computed once
            key = (record.job_id, record.incarnation, record.generation, entry.spec_hash,
                   entry.num_changes, len(record.decisions), start, stop)
            shared = self._shared_plans.get(key)
            if shared is not None:
                return shared
        await self._warm(entry, record)
        durable = entry.durable

        def compute() -> tuple[list[GroupValues], dict[str, Any] | None]:
            values = self._values(entry, record, start, stop) if start < stop else []
            # The states at the plan's last iteration and where the rank is: its next
            # plan starts right after the end, and it runs, reports (without skip_held)
            # and checkpoints from where it is, so a server that never saw the job (a
            # restart, a replica, an eviction) answers either without replaying more
            # than a plan. The end is a cursor now (a copy); the rank's iteration is
            # taken where it costs at most a keyframe interval of replay, else the
            # plan's start (a cursor too).
            last = start + len(values) - 1
            if not (frontier and values and last - durable >= self.keyframe_every):
                return values, None
            since = reported if entry.schedule.state_distance(
                reported) <= self.keyframe_every else start
            return values, entry.schedule.keyframe(last, record.decisions, since=since)

        if entry.schedule.is_cheap(start) and entry.lock.acquire(blocking=False):
            try:
                values, keyframe = compute()
            finally:
                entry.lock.release()
        else:
            def locked() -> tuple[list[GroupValues], dict[str, Any] | None]:
                with entry.lock:
                    return compute()

            values, keyframe = await self.offload(locked)
        if keyframe is not None:
            self._keep_keyframe(record.job_id, entry, keyframe)
        self._jobs.recount(record.job_id, entry)
        plan = plan_of(entry.spec, entry.schedule, start, stop, values, record.generation,
                       record.incarnation)
        if self.state_keys is not None:
            plan = dataclasses.replace(plan, horizon_token=sign_horizon(
                self.state_keys, record.job_id, record.incarnation, record.generation,
                start + len(values)))
        if key is not None:
            self._shared_plans.put(key, plan)
        return plan

    def _values(self, entry: LoadedJob, record: JobState, start: int,
                stop: int) -> list[GroupValues]:
        try:
            try:
                return entry.schedule.values_range(start, stop, record.decisions)
            except DecisionsChanged:
                # Decisions disagree with what this cached schedule saw (the job was
                # deleted and recreated meanwhile): start over from the stored record.
                entry.schedule = self._schedule(entry.spec, entry.changes, record)
                return entry.schedule.values_range(start, stop, record.decisions)
        except ConfigError as exc:  # the schedule's arithmetic fails at some iteration
            raise config_error(exc, "spec") from None

    # -- jobs -----------------------------------------------------------------------
    async def attach(
        self,
        job_id: str,
        spec_data: Mapping[str, Any] | None,
        *,
        world_size: int = 0,
        rank: int = 0,
        plan_size: int = 0,
        run_id: str = "",
        start_over: bool = False,
    ) -> Attachment:
        """Create the job from ``spec_data``, or join it (``spec_data=None``), as a rank
        of run ``run_id``.

        A generation belongs to one run. A rank of the job's run joins it; another run
        takes the job over in a new generation when it has no progress yet, and else
        gets ``resume_required`` (and nothing is recorded): it must load a checkpoint,
        start over (``start_over``, a new generation from iteration 0, audited) or use
        another job id.
        """
        check_job_id(job_id)
        self._check_run(run_id, world_size, rank)
        size = self._plan_size(plan_size)
        created = False
        if spec_data is None:
            record = await self._get_record(job_id)
        else:
            spec = await self._parsed(spec_data)
            first = min(size, spec.max_iters + 1, self._plan_cells_cap(spec, len(spec.params)))

            canonical, spec_hash, prebuilt = await self._first_plan(spec, first)
            # A new job is created with this rank joined and its first plan recorded (one
            # store write); an existing one is joined below.
            fresh = JobRecord(job_id, spec_hash, spec=canonical, world_size=world_size,
                              created_at=time.time(), incarnation=new_incarnation(),
                              run_id=run_id, progress={rank: 0},
                              issued_until=0 if start_over else first)
            await self._check_quota(job_id)
            with store_errors():
                record, created = await self.store.create(fresh)
            if not created and record.spec_hash != spec_hash:
                # A job keeps the engine semantics it was created with: the same config
                # attached on a newer server is the same job, computed with its version.
                kept = record.spec.get("semantics", 1)
                if kept != canonical.get("semantics", 1):
                    spec = parse_spec({**spec_data, "semantics": kept}, limits=self.limits)
                    canonical, spec_hash = spec.to_dict(), content_hash(spec.to_dict())
            if not created and record.spec_hash != spec_hash:
                diff = "; ".join(spec_difference(record.spec, canonical)) or "specs differ"
                raise AlreadyExists(
                    f"job {job_id!r} exists with a different spec: {diff}. Attach with the "
                    "job's config, use another job id, or delete the job first "
                    f"(paramsched jobs delete {job_id})")
            self._specs.setdefault(spec_hash, spec)
            if created:
                log.info("job created", extra=self._event("created", job_id, rank, 1))
        entry = await self._load(record, prebuilt if created else None)
        if created:
            # A new incarnation: no keyframe in the store can be its own, so the first
            # plan needs no keyframe read (``_warm`` would find none that fits).
            entry.warmed = True
        size = min(size, self._plan_cells_cap(entry.spec, len(entry.schedule.params)))
        issue = min(size, entry.schedule.max_iters + 1)
        # The plan from iteration 0 is handed out too: record it, so no change can alter
        # it (and the rank shows up in the job's progress).
        if created and not start_over:
            pass  # the created record holds this rank and the plan already
        elif start_over:
            record = await self._start_over(record, run_id, world_size, rank, issue)
        else:
            run_entry = self._audit_entry("run", 0, record.generation + 1, details={
                "run_id": run_id, "world_size": world_size, "previous_run_id": record.run_id,
                "previous_world_size": record.world_size})
            with store_errors():
                try:
                    record, outcome = await self.store.join(
                        job_id, run_id=run_id, world_size=world_size, rank=rank,
                        issue_until=issue, audit_entry=run_entry)
                except JobNotFound:
                    raise Aborted(f"job {job_id!r} was deleted while attaching; attach "
                                  "again") from None
                except WorldSizeConflict as exc:
                    raise InvalidArgument(str(exc), field="world_size") from None
                except RankOutOfRange as exc:
                    raise InvalidArgument(str(exc), field="rank") from None
            if outcome == "resume_required":
                view = JobView.of(record, await self._load(record))
                empty = Plan(0, view.params, view.spec.num_groups, [], record.generation,
                             None, view.max_iters, record.incarnation)
                return Attachment(view, created, empty, resume_required=True)
            if outcome == "new_run":
                log.info("job taken over by a new run",
                         extra=self._event("new_run", job_id, rank, record.generation))
        entry = await self._load(record)
        plan = await self._plan(entry, record, 0, size, frontier=True)
        self.events.plan_issued(job_id, len(plan.values))
        return Attachment(JobView.of(record, entry), created, plan)

    async def _first_plan(self, spec: JobSpec, first: int) -> tuple[dict[str, Any], str,
                                                                      Schedule]:
        """A new job's canonical spec, its hash, and its schedule with the first plan's
        ``first`` iterations computed: it must compute before anything is stored, and
        the job's plans continue from it. A spec computed before (by any job of this
        process) is not replayed again: its schedule is copied (``FirstPlans``)."""
        plans = self._first_plan_copies
        looked_up: tuple[dict[str, Any], str] | None = None
        if len(spec.schedulers) * spec.num_groups <= 256:
            # A small spec: its hash and a copy are cheap inline (a miss computes in a
            # worker, without hashing or looking it up again).
            canonical = spec.to_dict()
            spec_hash = content_hash(canonical)
            copied = plans.get(spec_hash, spec, first)
            if copied is not None:
                self._extend_first_plans(spec, spec_hash, first)
                return canonical, spec_hash, copied
            looked_up = canonical, spec_hash

        def compute() -> tuple[dict[str, Any], str, Schedule, bool]:
            if looked_up is not None:
                canonical, spec_hash = looked_up
            else:
                canonical = spec.to_dict()
                spec_hash = content_hash(canonical)
                schedule = plans.get(spec_hash, spec, first)
                if schedule is not None:
                    return canonical, spec_hash, schedule, True
            try:
                return canonical, spec_hash, plans.compute(spec, spec_hash, first), False
            except ConfigError as exc:
                raise config_error(exc, "spec") from None

        canonical, spec_hash, schedule, copied_ = await self.offload(compute)
        if copied_:
            self._extend_first_plans(spec, spec_hash, first)
        return canonical, spec_hash, schedule

    def _extend_first_plans(self, spec: JobSpec, spec_hash: str, first: int) -> None:
        """A spec attached again: its copy goes on to the end of the first refill (in
        the background, once), so the next jobs' first refills replay nothing either.
        Not at a spec's first job: a spec seen once costs no more than before (its
        job's own first refill computes those iterations meanwhile)."""
        plans = self._first_plan_copies
        ahead = plans.ahead(spec, first)
        if plans.computed(spec_hash) >= ahead or not plans.start_extending(spec_hash):
            return

        async def extend() -> None:
            try:
                await self.offload(lambda: plans.extend(spec_hash, spec, ahead))
            except ConfigError as exc:  # the jobs' own refills will say so
                log.debug("first plans of spec %s not extended: %s", spec_hash, exc)

        self._in_background(extend())

    def _check_run(self, run_id: str, world_size: int, rank: int) -> None:
        if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
            raise InvalidArgument("must be at most 128 letters, digits, '.', '_', ':' or '-'",
                                  field="run_id")
        limit = self.limits.max_world_size
        if not 0 <= world_size <= limit:
            raise InvalidArgument(f"must be in [0, {limit}], got {world_size}",
                                  field="world_size")
        if rank < 0 or rank >= (world_size or limit):
            raise InvalidArgument(f"rank {rank} is outside world_size {world_size}", field="rank")

    async def _start_over(self, record: JobRecord, run_id: str, world_size: int, rank: int,
                          issue: int) -> JobRecord:
        """A new generation of the job from iteration 0 for run ``run_id`` (its ranks
        share it): progress, decisions and changes are gone, the audit trail says so."""
        entry = self._audit_entry("start_over", 0, record.generation + 1, details={
            "run_id": run_id, "world_size": world_size,
            "previous_generation": record.generation, "previous_run_id": record.run_id})
        with store_errors():
            record, restarted = await self.store.load_state(
                record.job_id, spec=record.spec, spec_hash=record.spec_hash, decisions={},
                progress={rank: 0}, min_generation=1, state_hash=f"start-over:{run_id}",
                world_size=world_size, created_at=time.time(), changes=[],
                audit_entry=entry, issue_until=issue, run_id=run_id,
                incarnation=new_incarnation())
        if restarted:
            log.info("job started over", extra=self._event("started_over", record.job_id, rank,
                                                           record.generation))
        return record

    @staticmethod
    def _event(event: str, job_id: str, rank: int | None, generation: int) -> dict[str, Any]:
        return {"event": event, "job_id": job_id, "rank": rank, "generation": generation,
                "principal": current_principal.get().name}

    async def get(self, job_id: str) -> JobView:
        check_job_id(job_id)
        record = await self._get_record(job_id)
        return JobView.of(record, await self._load(record))

    async def list(
        self, prefix: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[JobView], str]:
        if page_size < 0:
            raise InvalidArgument(f"must be >= 0, got {page_size}", field="page_size")
        limit = min(page_size or 100, 1000)
        principal = current_principal.get()
        # A job-scoped caller's listing reads only its own ids and prefixes: O(page),
        # however many other jobs the store holds.
        with store_errors():
            if principal.admin:
                visible = await self.store.list(prefix, page_token, limit + 1)
            else:
                visible = await pages.scoped_list(self.store, principal, prefix, page_token,
                                                  limit + 1)
        more = len(visible) > limit
        visible = visible[:limit]
        views = [self._listed(r) for r in visible]
        return views, (visible[-1].job_id if more and visible else "")

    def _listed(self, record: JobRecord) -> JobView:
        """A listed job's view: its spec with its changes, built as for its values (no
        replay: stored changes carry the values they start from), so a listing and
        ``GetJob`` agree on the job's length and params."""
        spec = self._spec_for(record)
        entry = self._jobs.get(record.job_id)
        if entry is not None and (entry.incarnation, entry.generation, entry.num_changes) == (
                record.incarnation, record.generation, record.num_changes):
            return JobView(record, spec, entry.schedule.max_iters, entry.schedule.params)
        try:
            schedule = Schedule.from_changes(spec, record.changes or [], record.decisions,
                                             where="stored changes")
        except ConfigError as exc:
            raise config_error(exc, "spec") from None
        return JobView(record, spec, schedule.max_iters, schedule.params)

    async def delete(self, job_id: str) -> bool:
        check_job_id(job_id)
        entry = self._audit_entry("delete", 0, 0)
        with store_errors():
            deleted = await self.store.delete(job_id, entry)
        self._forget(job_id)
        if deleted:
            log.info("job deleted", extra=self._event("deleted", job_id, None, 0))
        return deleted

    async def expire_finished(self, retention: float, *, now: float | None = None,
                              page: int = 200) -> builtins.list[str]:
        """Delete the jobs that finished more than ``retention`` seconds ago, with their
        keyframes; their audit trails stay (with an ``expire`` entry), as after
        ``jobs delete``. A job resumed or changed meanwhile is kept (the store checks).
        Returns the deleted ids."""
        cutoff = (time.time() if now is None else now) - retention
        deleted: builtins.list[str] = []
        after = ""
        while True:
            with store_errors():
                records = await self.store.list("", after, page)
            for record in records:
                if 0 < record.finished_at <= cutoff:
                    entry = self._audit_entry("expire", 0, record.generation, details={
                        "finished_at": record.finished_at, "retention_seconds": retention})
                    with store_errors():
                        if await self.store.delete(record.job_id, entry,
                                                   finished_before=cutoff):
                            deleted.append(record.job_id)
                            self._forget(record.job_id)
            if len(records) < page:
                break
            after = records[-1].job_id
        if deleted:
            log.info("deleted %d jobs finished more than %.0f s ago", len(deleted), retention)
        return deleted

    async def _check_quota(self, job_id: str) -> None:
        """Refuse a job-scoped token a new job beyond its quota of live jobs
        (``max_jobs``), counted over its ids and id prefixes."""
        principal = current_principal.get()
        quota = principal.max_jobs
        if principal.admin or quota is None:
            return
        with store_errors():
            live = 0
            for prefix in principal.job_prefixes:
                live += await self.store.count(prefix, quota + 1)
            for exact in principal.jobs:
                if not exact.startswith(principal.job_prefixes) and \
                        await self.store.get(exact) is not None:
                    live += 1
            if live >= quota and await self.store.get(job_id) is None:
                raise ResourceExhausted(
                    f"token {principal.name!r} has {live} live jobs, its quota max_jobs="
                    f"{quota}; delete finished jobs (or wait for their retention to pass) "
                    "before creating more", budget="max_jobs")

    # -- progress -------------------------------------------------------------------
    async def report(
        self,
        job_id: str,
        *,
        generation: int,
        rank: int,
        iteration: int,
        epoch_end: int | None = None,
        metrics: Mapping[str, float] | None = None,
        plan_size: int = 0,
        incarnation: str = "",
        validation_at: int | None = None,
        held_until: int = 0,
        horizon_token: str = "",
        skip_held: bool = False,
    ) -> Plan:
        """Record a rank's progress (and an epoch's decision); return its next plan.

        ``metrics=None`` with ``epoch_end`` set means no validation ran after that epoch.
        ``validation_at`` (== ``iteration``, a job with ``val_interval``) reports the
        decision of that validation point instead of an epoch's.
        ``incarnation`` (the job's, as the rank knows it; empty: not checked) fences a
        rank of a job that was deleted and created again, or lost by the store.
        ``held_until`` / ``horizon_token``: the end of the plan the rank holds and the
        server's signature of it (``Plan.horizon_token``); see ``_claimed_horizon``.
        ``skip_held``: the plan leaves out the values below ``held_until`` (the rank holds
        them; the claim needs no trust here: a rank that claims more only starves
        itself): it starts at ``max(iteration, held_until)`` and the rank appends it.
        """
        check_job_id(job_id)
        if not 0 <= rank < self.limits.max_world_size:
            raise InvalidArgument(f"must be in [0, {self.limits.max_world_size}), got {rank}",
                                  field="rank")
        if iteration < 0:
            raise InvalidArgument(f"must be >= 0, got {iteration}", field="iteration")
        if generation < 1:
            raise InvalidArgument(f"must be >= 1, got {generation}", field="generation")
        size = self._plan_size(plan_size)
        entry = self._jobs.get(job_id)
        if entry is None or entry.generation != generation or (
                incarnation and entry.incarnation != incarnation):
            try:
                record = await self._get_record(job_id)
            except NotFound:
                if incarnation:
                    raise self._lost(job_id, rank, incarnation) from None
                raise
            self._check_fence(record, rank, generation, incarnation)
            entry = await self._load(record)
        if iteration > entry.schedule.max_iters:
            raise InvalidArgument(
                f"iteration {iteration} is past the end of training "
                f"({entry.schedule.max_iters})", field="iteration")
        await self._check_frontier(job_id, entry, iteration)
        held = self._claimed_horizon(job_id, entry, generation, incarnation, held_until,
                                     horizon_token)
        decision = self._decision(entry, iteration, epoch_end, metrics, validation_at)
        issue_until = min(iteration + size, entry.schedule.max_iters + 1,
                          iteration + self._plan_cells_cap(entry.spec,
                                                           len(entry.schedule.params)))
        finished_at = time.time() if iteration >= entry.schedule.max_iters else 0.0
        with store_errors():
            try:
                # (the reply may be shared with other reports: it is not changed here)
                reported = await self._reports.report(
                    job_id, generation=generation, rank=rank, iteration=iteration,
                    decision=decision, issue_until=issue_until,
                    known_spec_hash=entry.spec_hash, known_changes=entry.num_changes,
                    incarnation=entry.incarnation, finished_at=finished_at, held_until=held)
            except JobNotFound:
                self._forget(job_id)
                if incarnation:
                    raise self._lost(job_id, rank, incarnation) from None
                raise NotFound(f"job {job_id!r} does not exist") from None
            except IncarnationMismatch as exc:
                self._forget(job_id)
                if incarnation:
                    self._fenced(job_id, rank, generation, "incarnation")
                    raise FailedPrecondition(f"{exc}; stop this rank", reason="incarnation") \
                        from None
                raise Aborted(f"{exc} meanwhile; report again") from None
            except StaleGeneration as exc:
                self._forget(job_id)
                self._fenced(job_id, rank, generation, "generation")
                raise FailedPrecondition(str(exc)) from None
            except RankOutOfRange as exc:
                raise InvalidArgument(str(exc), field="rank") from None
        if reported.changes is not None or (
                reported.spec is not None and reported.spec_hash != entry.spec_hash):
            # A change came in meanwhile: the reply has what this entry lacks.
            entry = await self._load(reported.record(entry.spec.to_dict(), entry.changes))
        entry.frontier = max(entry.frontier, reported.issued_until)
        plan = await self._plan(entry, reported, iteration, iteration + size, frontier=True,
                                held=held_until if skip_held else 0)
        self.events.job_reported(job_id)
        self.events.plan_issued(job_id, len(plan.values))
        return plan

    def _claimed_horizon(self, job_id: str, entry: LoadedJob, generation: int,
                         incarnation: str, held_until: int, token: str) -> int:
        """The plan end a rank says it holds, as far as it is to be believed (0: none).

        The store keeps the highest one and no change starts before it, so a store that
        lost a plan's ``issued_until`` (a failover) still cannot make ranks disagree. A
        claim signed by a known state key counts as given; one signed wrongly is
        INVALID_ARGUMENT (a forgery or a bug, never an honest rank); an unsigned one (a
        server without state keys made the plan, or a key this server does not know)
        counts only with auth off, where every caller is trusted alike, capped at one
        maximum plan past the plans handed out; with auth on it is ignored, since any
        job-scoped token could otherwise block every change of the job."""
        if held_until < 0:
            raise InvalidArgument(f"must be >= 0, got {held_until}", field="held_until")
        if held_until == 0:
            return 0
        if not isinstance(token, str) or len(token) > 200:
            raise InvalidArgument("must be at most 200 characters", field="horizon_token")
        if self.state_keys is not None:
            verdict = check_horizon(self.state_keys, token, job_id,
                                    incarnation or entry.incarnation, generation, held_until)
            if verdict is False:
                raise InvalidArgument(
                    f"is not this service's signature of a plan of job {job_id!r} (generation "
                    f"{generation}) ending at held_until={held_until}; send the "
                    "horizon_token of the plan held, unchanged", field="horizon_token")
            if verdict:
                return held_until
        if self.auth_enabled:
            return 0
        return min(held_until, entry.frontier + self.max_plan_size,
                   entry.schedule.max_iters + 1)

    async def _check_frontier(self, job_id: str, entry: LoadedJob, iteration: int) -> None:
        """Refuse a report far past every plan handed out: no rank can be there (it waits
        when its plan runs out), and its plan would cost a replay of that whole distance.
        The slack of one maximum plan covers a store that lost the last plan's record."""
        if iteration <= entry.frontier + self.max_plan_size:
            return
        now = time.monotonic()
        if now - entry.frontier_read >= 1.0:  # another server may have issued since
            entry.frontier_read = now  # (read at most once a second: refusals stay cheap)
            record = await self._get_record(job_id)
            entry.frontier = max(entry.frontier, record.issued_until)
        if iteration > entry.frontier + self.max_plan_size:
            raise ResourceExhausted(
                f"job {job_id!r}: iteration {iteration} is past every plan handed out (up to "
                f"iteration {entry.frontier}) by more than max_plan_size={self.max_plan_size}; "
                "a rank reports the iterations it ran, which its plans cover",
                budget="max_plan_size")

    def _check_fence(self, record: JobRecord, rank: int, generation: int,
                     incarnation: str) -> None:
        """Refuse (FAILED_PRECONDITION) a rank of another incarnation or generation."""
        if incarnation and record.incarnation != incarnation:
            self._fenced(record.job_id, rank, generation, "incarnation")
            raise FailedPrecondition(
                f"{IncarnationMismatch(record.job_id, incarnation, record.incarnation)}; "
                "stop this rank", reason="incarnation")
        if record.generation != generation:
            self._fenced(record.job_id, rank, generation, "generation")
            raise FailedPrecondition(str(StaleGeneration(record.job_id, generation,
                                                         record.generation)))

    def _lost(self, job_id: str, rank: int, incarnation: str) -> FailedPrecondition:
        self._fenced(job_id, rank, 0, "lost")
        return FailedPrecondition(
            f"job {job_id!r} (incarnation {incarnation!r}) is gone from the job store: it was "
            "deleted, or the store lost its data; stop this rank and resume from a checkpoint "
            "(handle.load_state_dict) or start a new job", reason="lost")

    def _fenced(self, job_id: str, rank: int, generation: int, why: str) -> None:
        self.events.report_fenced(job_id)
        log.warning("report refused: this rank is fenced (%s)", why,
                    extra=self._event("fenced", job_id, rank, generation))

    def _decision(
        self,
        entry: LoadedJob,
        iteration: int,
        epoch_end: int | None,
        metrics: Mapping[str, float] | None,
        validation_at: int | None = None,
    ) -> tuple[int, dict[str, float] | None] | None:
        """The decision a report carries, keyed as the store keeps decisions: the epoch,
        or validation point k (``spec.decision_at``) of a job with val_interval."""
        spec = entry.spec
        if validation_at is not None:
            if epoch_end is not None:
                raise InvalidArgument("give epoch_end or validation_at, not both",
                                      field="validation_at")
            if spec.val_interval is None:
                raise InvalidArgument(
                    "this job has no validation points (JobSpec.val_interval); "
                    + ("report epoch ends with epoch_end" if spec.epoch_based
                       else "create it with val_interval"), field="validation_at")
            key = spec.decision_at(validation_at)
            if validation_at != iteration or key is None:
                raise InvalidArgument(
                    f"iteration {validation_at} is no validation point of this job (every "
                    f"{spec.val_interval} iterations and after the last one, "
                    f"{spec.max_iters}) or not the reported iteration {iteration}",
                    field="validation_at")
            epoch_end = key
        elif epoch_end is None:
            if metrics:
                raise InvalidArgument("metrics are only accepted with epoch_end or "
                                      "validation_at", field="metrics")
            return None
        elif not spec.epoch_based or not spec.epoch_length:
            raise InvalidArgument("this job is iteration-based (max_iters); it has no epochs",
                                  field="epoch_end")
        elif epoch_end < 0 or (epoch_end + 1) * spec.epoch_length != iteration:
            raise InvalidArgument(
                f"epoch {epoch_end} cannot end at iteration {iteration}: epochs are "
                f"{spec.epoch_length} iterations long",
                field="epoch_end")
        if metrics is not None:
            # NaN and infinities are valid metrics (a diverged validation loss must not
            # crash training): ReduceOnPlateau counts them as no improvement, as MMEngine.
            self.limits.check_metrics(metrics, "metrics")
            for name, value in metrics.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise InvalidArgument(f"must be a number, got {value!r}",
                                          field=f"metrics.{name}")
        if not entry.schedule.needs_decision(epoch_end):
            return None
        try:
            entry.schedule.check_metrics(epoch_end, metrics)
        except MetricsError as exc:
            raise InvalidArgument(exc.reason, field=exc.field) from None
        return epoch_end, (dict(metrics) if metrics is not None else None)

    def _window(self, start: int, stop: int, max_iters: int,
                stride: int = 1) -> pages.Window:
        """[start, stop) inside [0, max_iters] (stop 0: to the end), every ``stride``-th
        iteration; no length limit: the cost budget cuts pages (``pages``)."""
        return pages.window(start, stop, stride, max_iters)

    async def values(self, job_id: str, start: int, stop: int, *, stride: int = 1,
                     page_token: str = "", deadline: float | None = None) -> Page:
        """A page of the job's values for every ``stride``-th iteration of [start, stop)
        (stop=0: to the end), within ``max_values_cells``; ``next_page_token`` continues
        it. ``deadline`` (``time.monotonic()`` seconds): the work stops there."""
        check_job_id(job_id)
        record = await self._get_record(job_id)
        entry = await self._load(record)
        await self._warm(entry, record)
        request = self._window(start, stop, entry.schedule.max_iters, stride)
        bound = pages.binding("job", job_id, start, stop, stride)
        state = pages.job_state(record)
        first, carried = pages.read_token(page_token, request, bound, state)
        work = pages.Work(deadline)
        budget = self.max_values_cells

        def compute(held: bool = False) -> tuple[list[GroupValues], int | None,
                                                 dict[str, Any] | None]:
            """The page and the replay state its token carries; ``held``: the caller
            holds the job's lock throughout (a short page computed inline), else it is
            taken per chunk, so the job's ranks are served between chunks."""
            def locked() -> AbstractContextManager[Any]:
                return nullcontext() if held else entry.lock

            with locked():
                replay = entry.schedule.replay_distance(first)
                width = entry.spec.num_groups * len(entry.schedule.params)
            # A cold server (a replica the earlier pages did not reach, or one that
            # evicted the job) has no state near ``first``: continue from the state the
            # token carries, in a schedule of this request's own, so a forged state
            # changes only the forger's reply, never the job's plans.
            own: Schedule | None = None
            if carried is not None and not held and replay > request.stride:
                own = self._schedule(entry.spec, entry.changes, record)
                pages.seed_carried(own, carried, request, first)
                replay = own.replay_distance(first)
            reached = [first]  # the furthest iteration computed: its state is kept

            def values_range(a: int, b: int) -> list[GroupValues]:
                if own is None:
                    with locked():
                        got = self._values(entry, record, a, b)
                else:
                    try:
                        got = own.values_range(a, b, record.decisions)
                    except ConfigError as exc:
                        raise config_error(exc, "spec") from None
                reached[0] = max(reached[0], a + len(got) - 1)
                return got

            count = pages.affordable(budget, width, replay, request.points_from(first),
                                     first=first, stride=request.stride, preview=False)
            rows, missing = pages.compute(values_range, request, first, count, work,
                                          replay_from=first - replay)
            with locked() if own is None else nullcontext():
                try:
                    keyframe = pages.keyframe_to_carry(
                        own or entry.schedule, request, first, rows, missing,
                        record.decisions, reached[0])
                except DecisionsChanged:  # (the next page rebuilds the schedule)
                    keyframe = None
            return rows, missing, keyframe

        # A short page near a kept state (the dashboard's samples, `jobs show`) costs
        # less than a thread hop: inline, if the job's lock is free.
        span = min(request.stop - first, request.points_from(first) * request.stride)
        if span <= pages.INLINE_ITERATIONS and entry.lock.acquire(blocking=False):
            try:
                near = entry.schedule.replay_distance(first) + span <= pages.INLINE_ITERATIONS
                found = compute(held=True) if near else None
            finally:
                entry.lock.release()
        else:
            found = None
        rows, missing, keyframe = (found if found is not None
                                   else await pages.run(work, compute, self.offload))
        return pages.finish(entry.spec, entry.schedule, request, first, rows, missing,
                            bound, state, record.generation, record.incarnation,
                            keyframe=keyframe)

    async def preview(
        self,
        spec_data: Mapping[str, Any],
        start: int,
        stop: int,
        decisions: Mapping[int, Mapping[str, float] | None],
        *,
        stride: int = 1,
        page_token: str = "",
        deadline: float | None = None,
    ) -> Page:
        """A page of the values a spec would give, without a job (nothing is stored),
        paged like ``values``; its first page replays from iteration 0, which its budget
        counts, and each token carries the replay state where its page stopped, so a
        later page costs O(page). Computed in a worker thread: a long preview must not
        stall the others: in a worker process (``previews``), so its replay does not
        hold this process's GIL either."""
        request = PreviewRequest(
            dict(spec_data), start, stop,
            {int(e): (dict(m) if m is not None else None) for e, m in decisions.items()},
            stride, page_token, deadline, self.max_values_cells, pages.MAX_CARRIED_LENGTH,
            self.limits)
        if self.preview_processes:
            for attempt in range(2):
                executor = previews.pool(self.compute_workers)

                def in_worker(pool: ProcessPoolExecutor = executor) -> Page:
                    return pool.submit(previews.preview_page, request).result()

                try:
                    return await self.offload(in_worker)
                except BrokenProcessPool:  # a worker was killed: a new pool, once
                    previews.reset(self.compute_workers)
                    if attempt:
                        raise Unavailable("the preview workers keep dying; retry") from None
        work = pages.Work(deadline)
        return await pages.run(work, lambda: previews.preview_page(request), self.offload)

    # -- checkpoints ------------------------------------------------------------------
    async def get_state(self, job_id: str, iteration: int, *, generation: int = 0,
                        incarnation: str = "") -> str:
        """The schedule state at ``iteration`` (iterations done): a signed v2 state.

        With ``generation``/``incarnation`` (the caller's), a fenced caller is refused:
        its checkpoint would carry another generation's decisions as if they were its own.
        """
        check_job_id(job_id)
        record = await self._get_record(job_id)
        if generation or incarnation:
            self._check_fence(record, 0, generation or record.generation, incarnation)
        entry = await self._load(record)
        spec = entry.spec
        if not 0 <= iteration <= entry.schedule.max_iters:
            raise InvalidArgument(
                f"must be in [0, {entry.schedule.max_iters}], got {iteration}",
                field="iteration")
        with store_errors():
            audit = await self.store.audit(job_id)
        done_epochs = spec.decisions_done(iteration)  # epochs, or val_interval's points
        decisions = {str(e): m for e, m in sorted(record.decisions.items()) if e < done_epochs}
        payload = {
            "job_id": job_id,
            "incarnation": record.incarnation,
            "generation": record.generation,
            "iteration": iteration,
            "spec": record.spec,
            "decisions": decisions,
            "changes": entry.changes,
            "audit": audit,
            "run_id": record.run_id,
            "saved_at": time.time(),
        }
        await self._warm(entry, record)
        keyframe = await self._keyframe_at(entry, record, iteration)
        if keyframe is not None:
            payload["keyframe"] = keyframe
        return build_state(payload, self.state_keys)

    async def _keyframe_at(self, entry: LoadedJob, record: JobRecord,
                           iteration: int) -> dict[str, Any] | None:
        """The schedule's keyframe at ``iteration`` for a checkpoint, when it costs at
        most a short replay (a checkpoint is saved where the ranks are, which their plans
        just computed); else None: the checkpoint is still complete, only a server
        loading it replays further."""
        def compute() -> dict[str, Any] | None:
            with entry.lock:
                schedule = entry.schedule
                if schedule.replay_distance(iteration) > self.keyframe_every + \
                        self.max_plan_size:
                    return None
                try:
                    return schedule.keyframe(iteration, record.decisions)
                except ConfigError:  # the arithmetic fails there: no state to keep
                    return None

        return await self.offload(compute)

    async def load_state(
        self,
        job_id: str,
        state_json: str,
        *,
        plan_size: int = 0,
        world_size: int = 0,
        rank: int = 0,
        run_id: str = "",
        fork: bool = False,
        allow_unsigned: bool = False,
    ) -> tuple[JobView, Plan, bool]:
        """Resume ``job_id`` from a checkpoint state (into an empty store too).

        Ranks of one run loading one checkpoint share one new generation; another run
        loading it again gets another one (fencing the first). The state is validated
        completely first; see ``_trust`` for which states are taken as the service's own.
        """
        check_job_id(job_id)
        self._check_run(run_id, world_size, rank)
        size = self._plan_size(plan_size)
        state = parse_state(state_json, keys=self.state_keys, limits=self.limits)
        restore_audit = self._trust(job_id, state, fork=fork, allow_unsigned=allow_unsigned)
        await self._check_quota(job_id)
        schedule = state.schedule
        details: dict[str, Any] = {
            "checkpoint_generation": state.generation,
            "checkpoint_iteration": state.iteration,
            "signature": state.signature_state,
            "run_id": run_id,
            "world_size": world_size,
        }
        if fork:
            details["forked_from"] = state.job_id
        if allow_unsigned and not state.signed:
            details["allow_unsigned"] = True
        entry_data = self._audit_entry("resume", state.iteration, state.generation + 1,
                                       details=details)
        canonical = state.spec.to_dict()
        with store_errors():
            record, resumed = await self.store.load_state(
                job_id, spec=canonical, spec_hash=content_hash(canonical),
                decisions=state.decisions, progress={}, min_generation=state.generation + 1,
                state_hash=f"{state.digest}:{run_id}", world_size=world_size,
                created_at=time.time(), changes=state.changes,
                audit_entries=state.audit if restore_audit else [],
                audit_entry=entry_data,
                issue_until=min(state.iteration + size, schedule.max_iters + 1,
                                state.iteration + self._plan_cells_cap(
                                    state.spec, len(schedule.params))),
                run_id=run_id, incarnation=new_incarnation())
        entry = await self._load(record)
        if state.keyframe is not None and (state.signed or not self.auth_enabled) and \
                record.resumed_from == f"{state.digest}:{run_id}":
            # The checkpoint's replay states: trusted only as the service's own (signed),
            # or where every caller is trusted alike (no auth); else the server replays.
            try:
                with entry.lock:
                    entry.schedule.seed(state.keyframe)
                self._keep_keyframe(job_id, entry, state.keyframe)
            except ValueError as exc:  # the job's changes differ from the checkpoint's
                log.debug("checkpoint keyframe of job %r not used: %s", job_id, exc)
        plan = await self._plan(entry, record, state.iteration, state.iteration + size,
                                frontier=True)
        if resumed:
            log.info("job resumed from a checkpoint at iteration %d", state.iteration,
                     extra=self._event("resumed", job_id, None, record.generation))
        self.events.plan_issued(job_id, len(plan.values))
        return JobView.of(record, entry), plan, resumed

    def _trust(self, job_id: str, state: CheckpointState, *, fork: bool,
               allow_unsigned: bool) -> bool:
        """Refuse a state the caller may not load; return whether its audit trail may be
        restored (only what this service wrote: a signed state, or any state without
        auth, where every caller is trusted alike).

        With auth on, only states this service signed load, except that an admin may
        load another one with ``allow_unsigned`` (audited). A signature that does not
        verify is refused even without auth: the state was edited. A state of another
        job needs ``fork``.
        """
        principal = current_principal.get()
        if allow_unsigned and not principal.admin:
            raise PermissionDenied("allow_unsigned is for admin tokens only")
        problem = {
            "invalid": "its signature does not verify: the state was edited after the "
                       "service saved it",
            "unknown key": "it is signed with a key this server does not have; keep the old "
                           "key in --state-key-file (after the new one) while its "
                           "checkpoints are in use",
            "unsigned": "it is not signed by this service (saved by a server without "
                        "--state-key-file, or by a version before signed checkpoints)",
        }.get(state.signature_state)
        refuse = problem is not None and (self.auth_enabled or state.signature_state == "invalid")
        if refuse and not allow_unsigned:
            raise InvalidArgument(
                f"this checkpoint cannot be loaded: {problem}. Save a new checkpoint with "
                "handle.state_dict() from a current server, or have an admin load it once "
                "with allow_unsigned (audited)", field="state.signature")
        if state.job_id and state.job_id != job_id:
            if not fork:
                raise InvalidArgument(
                    f"this checkpoint is of job {state.job_id!r}, not {job_id!r}; to start "
                    f"{job_id!r} from it, load it with load_state_dict(state, fork=True)",
                    field="state.job_id")
            if not principal.may_access(state.job_id):
                raise PermissionDenied(
                    f"forking needs access to the checkpoint's job {state.job_id!r}")
            return False  # another job's trail is not this job's history
        return state.signed or not self.auth_enabled

    def _audit_entry(self, action: str, iteration: int, generation: int, *,
                     details: Any = None, reason: str = "",
                     before: Any = None, after: Any = None) -> dict[str, Any]:
        """One audit-trail record: when, who, what, where, and the values around it."""
        return {
            "time": time.time(),
            "principal": current_principal.get().name,
            "action": action,
            "iteration": iteration,
            "generation": generation,
            "details": details,
            "reason": reason,
            "before": before or [],
            "after": after or [],
        }

    # -- live changes -------------------------------------------------------------------
    async def reschedule(
        self,
        job_id: str,
        change: Mapping[str, Any],
        *,
        dry_run: bool = False,
        force: bool = False,
        action: str = "reschedule",
        reason: str = "",
        preview: int = 100,
        request_id: str = "",
    ) -> RescheduleResult:
        """Change a job's schedule from ``change["from_iteration"]`` (default: the earliest
        iteration no plan covers) for every rank. See ``schedules.reschedule``.

        ``request_id`` makes the change idempotent: a change of this job whose audit entry
        carries the same id was applied already (a retry after UNAVAILABLE or a lost
        reply), so it is answered again instead of applied twice."""
        check_job_id(job_id)
        if not isinstance(request_id, str) or len(request_id) > 128:
            raise InvalidArgument("must be at most 128 characters", field="request_id")
        if not 0 < preview <= 100_000:
            raise InvalidArgument("must be in [1, 100000]", field="preview_iterations")
        if not ACTION_PATTERN.fullmatch(action or "reschedule"):
            raise InvalidArgument("must be a lowercase label of up to 32 letters, digits, '_' "
                                  f"or '-', got {action!r}", field="action")
        if not isinstance(reason, str) or len(reason) > 4096:
            raise InvalidArgument("must be at most 4096 characters", field="reason")
        change = check_change_data(change, "change", self.limits)
        for _attempt in range(5):
            record = await self._get_record(job_id)
            entry = await self._load(record)
            if request_id and not dry_run:
                done = await self._applied_change(job_id, request_id)
                if done is not None:
                    empty = plan_of(entry.spec, entry.schedule, int(done["iteration"]),
                                    int(done["iteration"]), [], record.generation,
                                    record.incarnation)
                    return RescheduleResult(JobView.of(record, entry), int(done["iteration"]),
                                            empty, empty, True, done,
                                            done.get("before") or [], done.get("after") or [])
            data = dict(change)
            # Past every plan handed out, and every plan a rank reported holding (the
            # store may have lost the former in a failover; ranks keep reporting the latter).
            earliest = max([record.issued_until, record.held_until]
                           + [o.start for o in entry.schedule.changes])
            if data.get("from_iteration") is None:
                data["from_iteration"] = earliest
            start = data["from_iteration"]
            if isinstance(start, int) and start < earliest:
                raise OutOfRange(
                    f"job {job_id!r}: iteration {start} is too early; values up to iteration "
                    f"{earliest - 1} were already handed out to ranks, so the earliest "
                    f"iteration a change can take effect is {earliest}",
                    field="from_iteration")
            # Building the change, comparing and checking bounds may replay far: off the
            # event loop, under the schedule's lock (the new schedule shares its timelines).
            def build(entry: LoadedJob = entry, record: JobRecord = record,
                      data: dict[str, Any] = data) -> tuple[Any, dict[str, Any], RescheduleResult]:
                with entry.lock:
                    try:
                        new_change = build_change(entry.schedule, data,
                                                  decisions=record.decisions, where="change")
                    except ConfigError as exc:
                        raise config_error(exc, "") from None
                    if new_change.mode == "replace":
                        data = resolved(entry.schedule, data, record.decisions)
                    after = Schedule(entry.spec)
                    for old in entry.schedule.changes:
                        after.add(old)
                    after.add(new_change)
                    result = compare(entry, after, new_change, record, preview)
                    check_guardrails(entry.spec, after, new_change, result, force,
                                     record.decisions)
                    return new_change, data, result

            new_change, data, result = await self.offload(build)
            audit = self._audit_entry(action or "reschedule", new_change.start, record.generation,
                                      details=data, reason=reason,
                                      before=result.before_at, after=result.after_at)
            if request_id:
                audit["request_id"] = request_id
            if dry_run:
                return result
            try:
                with store_errors():
                    record = await self.store.reschedule(
                        job_id, generation=record.generation,
                        expected_changes=record.num_changes, change=data, audit_entry=audit)
            except (ChangeConflict, StaleGeneration):
                continue  # another change or a resume landed meanwhile: compute it again
            except TooEarly as exc:
                if change.get("from_iteration") is None:
                    continue  # ranks moved on meanwhile: the earliest iteration is later now
                raise OutOfRange(str(exc), field="from_iteration") from None
            except JobNotFound:
                raise NotFound(f"job {job_id!r} does not exist") from None
            entry = await self._load(record)
            log.info("job rescheduled (%s) from iteration %d", action, new_change.start,
                     extra=self._event("rescheduled", job_id, None, record.generation))
            return RescheduleResult(JobView.of(record, entry), result.from_iteration,
                                    result.before, result.after, True, audit,
                                    result.before_at, result.after_at)
        raise Aborted(f"job {job_id!r} kept changing while the change was computed; try again")

    async def _applied_change(self, job_id: str, request_id: str) -> dict[str, Any] | None:
        """The audit entry of the change ``request_id`` applied to the job, if any."""
        with store_errors():
            trail = await self.store.audit(job_id)
        for item in reversed(trail):
            if item.get("request_id") == request_id:
                return item
        return None

    async def history(self, job_id: str) -> JsonObjects:
        """A job id's audit trail (it outlives the job)."""
        check_job_id(job_id)
        with store_errors():
            trail = await self.store.audit(job_id)
        if not trail:
            await self._get_record(job_id)  # NOT_FOUND for an id that never had a job
        return trail
