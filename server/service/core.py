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
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..auth import current_principal
from ..errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    Unavailable,
)
from ..schedules import (
    ConfigError,
    DecisionsChanged,
    GroupValues,
    JobSpec,
    MetricsError,
    Timeline,
)
from ..schedules.reschedule import Schedule, build_override, resolved
from ..store import (
    ChangeConflict,
    IncarnationMismatch,
    JobNotFound,
    JobRecord,
    JobStore,
    RankOutOfRange,
    StaleGeneration,
    StoreUnavailable,
    TooEarly,
    WorldSizeConflict,
    content_hash,
)
from ..store.base import JsonObjects
from .changes import check_guardrails, compare
from .checkpoints import (
    ACTION_PATTERN,
    RUN_ID_PATTERN,
    CheckpointState,
    build_state,
    check_change_data,
    parse_state,
)
from .inputs import (
    Limits,
    check_job_id,
    config_error,
    parse_spec,
    spec_difference,
)
from .signing import StateKeys
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
        max_preview_iterations: int = 1_000_000,
        limits: Limits | None = None,
        events: ServiceEvents | None = None,
        state_keys: StateKeys | None = None,
        auth_enabled: bool = False,
    ) -> None:
        self.store = store
        # Checkpoint states are signed with these; with auth on, only signed ones load.
        self.state_keys = state_keys
        self.auth_enabled = auth_enabled
        self.limits = limits or Limits()
        self.events: ServiceEvents = events or NoEvents()
        self.default_plan_size = default_plan_size
        self.max_plan_size = max_plan_size
        self.cache_size = cache_size
        self.max_preview_iterations = max_preview_iterations
        self._jobs: OrderedDict[str, LoadedJob] = OrderedDict()
        self._specs: OrderedDict[str, JobSpec] = OrderedDict()

    # -- caches -------------------------------------------------------------------
    def _spec_for(self, record: JobRecord) -> JobSpec:
        spec = self._specs.get(record.spec_hash)
        if spec is None:
            assert record.spec is not None
            spec = parse_spec(record.spec, prefix="stored spec")
            self._specs[record.spec_hash] = spec
            if len(self._specs) > self.cache_size:
                self._specs.popitem(last=False)
        else:
            self._specs.move_to_end(record.spec_hash)
        return spec

    def _loaded(self, record: JobRecord) -> LoadedJob:
        entry = self._jobs.get(record.job_id)
        if (
            entry is None
            or entry.incarnation != record.incarnation
            or entry.spec_hash != record.spec_hash
            or entry.generation != record.generation
            or entry.num_changes != record.num_changes
        ):
            spec = self._spec_for(record)
            if record.overrides is None:  # a reply that left out changes we should hold
                raise AssertionError("record without its changes for an uncached schedule")
            overrides = list(record.overrides)
            entry = LoadedJob(record.incarnation, record.spec_hash, record.generation,
                              record.num_changes, spec,
                            self._schedule(spec, overrides, record), overrides)
            self._jobs[record.job_id] = entry
            if len(self._jobs) > self.cache_size:
                self._jobs.popitem(last=False)
        else:
            self._jobs.move_to_end(record.job_id)
        return entry

    @staticmethod
    def _schedule(spec: JobSpec, overrides: list[dict[str, Any]], record: JobRecord) -> Schedule:
        schedule = Schedule(spec)
        for i, data in enumerate(overrides):
            schedule.add(build_override(schedule, data, decisions=record.decisions,
                                        where=f"stored change {i}"))
        return schedule

    def _forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

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

    async def _plan(self, entry: LoadedJob, record: JobRecord, start: int, stop: int) -> Plan:
        """The plan for [start, stop): computed inline when cheap (near a keyframe or a
        recent query), else in a worker thread, so a long replay (a cold cache after a
        restart) never stalls the other jobs' reports or the health checks."""
        schedule = entry.schedule
        stop = min(stop, schedule.max_iters + 1)
        if start > schedule.max_iters:
            raise InvalidArgument(
                f"iteration {start} is past the end of training ({schedule.max_iters})",
                field="iteration")
        if schedule.is_cheap(start) and entry.lock.acquire(blocking=False):
            try:
                values = self._values(entry, record, start, stop)
            finally:
                entry.lock.release()
        else:
            def compute() -> list[GroupValues]:
                with entry.lock:
                    return self._values(entry, record, start, stop)

            values = await asyncio.to_thread(compute)
        return plan_of(entry.spec, entry.schedule, start, stop, values, record.generation,
                       record.incarnation)

    def _values(self, entry: LoadedJob, record: JobRecord, start: int,
                stop: int) -> list[GroupValues]:
        try:
            try:
                return entry.schedule.values_range(start, stop, record.decisions)
            except DecisionsChanged:
                # Decisions disagree with what this cached schedule saw (the job was
                # deleted and recreated meanwhile): start over from the stored record.
                entry.schedule = self._schedule(entry.spec, entry.overrides, record)
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
            spec = parse_spec(spec_data, limits=self.limits)
            try:  # the first plan must compute before anything is stored
                Timeline(spec).values_range(0, min(size, spec.max_iters + 1), {}, partial=True)
            except ConfigError as exc:
                raise config_error(exc, "spec") from None
            canonical = spec.to_dict()
            spec_hash = content_hash(canonical)
            fresh = JobRecord(job_id, canonical, spec_hash, world_size=world_size,
                              created_at=time.time(), incarnation=new_incarnation(),
                              run_id=run_id)
            with store_errors():
                record, created = await self.store.create(fresh)
            if not created and record.spec_hash != spec_hash and record.spec is not None:
                # A job keeps the engine semantics it was created with: the same config
                # attached on a newer server is the same job, computed with its version.
                kept = record.spec.get("semantics", 1)
                if kept != canonical.get("semantics", 1):
                    spec = parse_spec({**spec_data, "semantics": kept}, limits=self.limits)
                    canonical, spec_hash = spec.to_dict(), content_hash(spec.to_dict())
            if not created and record.spec_hash != spec_hash:
                assert record.spec is not None
                diff = "; ".join(spec_difference(record.spec, canonical)) or "specs differ"
                raise AlreadyExists(
                    f"job {job_id!r} exists with a different spec: {diff}. Attach with the "
                    "job's config, use another job id, or delete the job first "
                    f"(paramsched jobs delete {job_id})")
            self._specs.setdefault(spec_hash, spec)
            if created:
                log.info("job created", extra=self._event("created", job_id, rank, 1))
        entry = self._loaded(record)
        issue = min(size, entry.schedule.max_iters + 1)
        # The plan from iteration 0 is handed out too: record it, so no change can alter
        # it (and the rank shows up in the job's progress).
        if start_over:
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
                view = JobView.of(record, self._loaded(record))
                empty = Plan(0, view.params, view.spec.num_groups, [], record.generation,
                             None, view.max_iters, record.incarnation)
                return Attachment(view, created, empty, resume_required=True)
            if outcome == "new_run":
                log.info("job taken over by a new run",
                         extra=self._event("new_run", job_id, rank, record.generation))
        entry = self._loaded(record)
        plan = await self._plan(entry, record, 0, size)
        self.events.plan_issued(job_id, len(plan.values))
        return Attachment(JobView.of(record, entry), created, plan)

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
        assert record.spec is not None
        entry = self._audit_entry("start_over", 0, record.generation + 1, details={
            "run_id": run_id, "world_size": world_size,
            "previous_generation": record.generation, "previous_run_id": record.run_id})
        with store_errors():
            record, restarted = await self.store.load_state(
                record.job_id, spec=record.spec, spec_hash=record.spec_hash, decisions={},
                progress={rank: 0}, min_generation=1, state_hash=f"start-over:{run_id}",
                world_size=world_size, created_at=time.time(), overrides=[],
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
        return JobView.of(record, self._loaded(record))

    async def list(
        self, prefix: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[JobView], str]:
        if page_size < 0:
            raise InvalidArgument(f"must be >= 0, got {page_size}", field="page_size")
        limit = min(page_size or 100, 1000)
        principal = current_principal.get()
        visible: list[JobRecord] = []
        after, exhausted = page_token, False
        # A job-scoped caller sees only its jobs: read on until the page is full.
        while len(visible) <= limit and not exhausted:
            with store_errors():
                records = await self.store.list(prefix, after, limit + 1)
            exhausted = len(records) <= limit
            if records:
                after = records[-1].job_id
            visible.extend(r for r in records if principal.may_access(r.job_id))
        more = len(visible) > limit
        visible = visible[:limit]
        views = [self._listed(r) for r in visible]
        return views, (visible[-1].job_id if more and visible else "")

    def _listed(self, record: JobRecord) -> JobView:
        """A listed job's view without building its schedule (cheap for long lists)."""
        spec = self._spec_for(record)
        max_iters, params = spec.max_iters, spec.params
        for change in record.overrides or []:
            max_iters = change.get("max_iters") or max_iters
            params = tuple(dict.fromkeys(params + tuple(change.get("params") or ())))
        return JobView(record, spec, max_iters, params)

    async def delete(self, job_id: str) -> bool:
        check_job_id(job_id)
        entry = self._audit_entry("delete", 0, 0)
        with store_errors():
            deleted = await self.store.delete(job_id, entry)
        self._forget(job_id)
        if deleted:
            log.info("job deleted", extra=self._event("deleted", job_id, None, 0))
        return deleted

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
    ) -> Plan:
        """Record a rank's progress (and an epoch's decision); return its next plan.

        ``metrics=None`` with ``epoch_end`` set means no validation ran after that epoch.
        ``incarnation`` (the job's, as the rank knows it; empty: not checked) fences a
        rank of a job that was deleted and created again, or lost by the store.
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
            entry = self._loaded(record)
        if iteration > entry.schedule.max_iters:
            raise InvalidArgument(
                f"iteration {iteration} is past the end of training "
                f"({entry.schedule.max_iters})", field="iteration")
        decision = self._decision(entry, iteration, epoch_end, metrics)
        with store_errors():
            try:
                record = await self.store.report(
                    job_id, generation=generation, rank=rank, iteration=iteration,
                    decision=decision,
                    issue_until=min(iteration + size, entry.schedule.max_iters + 1),
                    known_spec_hash=entry.spec_hash, known_changes=entry.num_changes,
                    incarnation=entry.incarnation)
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
        if record.overrides is not None or (
                record.spec is not None and record.spec_hash != entry.spec_hash):
            # A change came in meanwhile.
            if record.spec is None:
                record.spec = entry.spec.to_dict()
            entry = self._loaded(record)
        plan = await self._plan(entry, record, iteration, iteration + size)
        self.events.job_reported(job_id)
        self.events.plan_issued(job_id, len(plan.values))
        return plan

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
    ) -> tuple[int, dict[str, float] | None] | None:
        if epoch_end is None:
            if metrics:
                raise InvalidArgument("metrics are only accepted with epoch_end",
                                      field="metrics")
            return None
        spec = entry.spec
        if not spec.epoch_based or not spec.epoch_length:
            raise InvalidArgument("this job is iteration-based (max_iters); it has no epochs",
                                  field="epoch_end")
        if epoch_end < 0 or (epoch_end + 1) * spec.epoch_length != iteration:
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

    def _window(self, start: int, stop: int, max_iters: int) -> tuple[int, int]:
        """[start, stop) inside [0, max_iters] (stop 0: to the end), at most
        ``max_preview_iterations`` long: one call never computes unbounded values."""
        stop = min(stop or max_iters + 1, max_iters + 1)
        if not 0 <= start <= max_iters:
            raise InvalidArgument(f"must be in [0, {max_iters}], got {start}",
                                  field="start_iteration")
        if stop <= start:
            raise InvalidArgument(f"must be after start_iteration ({start}), got {stop}",
                                  field="stop_iteration")
        if stop - start > self.max_preview_iterations:
            raise InvalidArgument(
                f"{stop - start} iterations exceed the limit max_preview_iterations="
                f"{self.max_preview_iterations}; ask in pages with start/stop_iteration",
                field="stop_iteration")
        return start, stop

    async def values(self, job_id: str, start: int, stop: int) -> Plan:
        """The job's values for iterations [start, stop) (stop=0: to the end)."""
        check_job_id(job_id)
        record = await self._get_record(job_id)
        entry = self._loaded(record)
        start, stop = self._window(start, stop, entry.schedule.max_iters)
        return await self._plan(entry, record, start, stop)

    async def preview(
        self,
        spec_data: Mapping[str, Any],
        start: int,
        stop: int,
        decisions: Mapping[int, Mapping[str, float] | None],
    ) -> Plan:
        """The values a spec would give, without a job (nothing is stored). Computed in
        a worker thread: a long preview must not stall the other requests."""
        spec = parse_spec(spec_data, limits=self.limits)
        start, stop = self._window(start, stop, spec.max_iters)
        timeline = Timeline(spec)
        for epoch, metrics in decisions.items():
            try:
                timeline.check_metrics(epoch, metrics)
            except MetricsError as exc:
                raise InvalidArgument(exc.reason, field=f"decisions[{epoch}].{exc.field}") from None

        def compute() -> list[GroupValues]:
            try:
                return timeline.values_range(start, stop, dict(decisions), partial=True)
            except ConfigError as exc:
                raise config_error(exc, "spec") from None

        values = await asyncio.to_thread(compute)
        schedule = Schedule(spec)
        return plan_of(spec, schedule, start, stop, values, 0)

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
        entry = self._loaded(record)
        spec = entry.spec
        if not 0 <= iteration <= entry.schedule.max_iters:
            raise InvalidArgument(
                f"must be in [0, {entry.schedule.max_iters}], got {iteration}",
                field="iteration")
        with store_errors():
            audit = await self.store.audit(job_id)
        length = spec.epoch_length or 0
        done_epochs = iteration // length if spec.epoch_based and length else 0
        decisions = {str(e): m for e, m in sorted(record.decisions.items()) if e < done_epochs}
        payload = {
            "job_id": job_id,
            "incarnation": record.incarnation,
            "generation": record.generation,
            "iteration": iteration,
            "spec": record.spec,
            "decisions": decisions,
            "changes": entry.overrides,
            "audit": audit,
            "run_id": record.run_id,
            "saved_at": time.time(),
        }
        return build_state(payload, self.state_keys)

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
                created_at=time.time(), overrides=state.changes,
                audit_entries=state.audit if restore_audit else [],
                audit_entry=entry_data,
                issue_until=min(state.iteration + size, schedule.max_iters + 1),
                run_id=run_id, incarnation=new_incarnation())
        entry = self._loaded(record)
        plan = await self._plan(entry, record, state.iteration, state.iteration + size)
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
            entry = self._loaded(record)
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
            earliest = max([record.issued_until] + [o.start for o in entry.schedule.overrides])
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
                        override = build_override(entry.schedule, data,
                                                  decisions=record.decisions, where="change")
                    except ConfigError as exc:
                        raise config_error(exc, "") from None
                    if override.mode == "replace":
                        data = resolved(entry.schedule, data, record.decisions)
                    after = Schedule(entry.spec)
                    for old in entry.schedule.overrides:
                        after.add(old)
                    after.add(override)
                    result = compare(entry, after, override, record, preview)
                    check_guardrails(entry.spec, after, override, result, force,
                                     record.decisions)
                    return override, data, result

            override, data, result = await asyncio.to_thread(build)
            audit = self._audit_entry(action or "reschedule", override.start, record.generation,
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
                        expected_changes=record.num_changes, override=data, audit_entry=audit)
            except (ChangeConflict, StaleGeneration):
                continue  # another change or a resume landed meanwhile: compute it again
            except TooEarly as exc:
                if change.get("from_iteration") is None:
                    continue  # ranks moved on meanwhile: the earliest iteration is later now
                raise OutOfRange(str(exc), field="from_iteration") from None
            except JobNotFound:
                raise NotFound(f"job {job_id!r} does not exist") from None
            entry = self._loaded(record)
            log.info("job rescheduled (%s) from iteration %d", action, override.start,
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
