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
import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ..auth import current_principal
from ..errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
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
    JobNotFound,
    JobRecord,
    JobStore,
    StaleGeneration,
    StoreUnavailable,
    TooEarly,
    canonical_json,
    content_hash,
)
from ..store.base import JsonObjects
from .changes import check_guardrails, compare
from .inputs import (
    STATE_FORMAT,
    Limits,
    check_job_id,
    checked_changes,
    config_error,
    parse_decisions,
    parse_spec,
    parse_state,
    spec_difference,
)
from .views import JobView, LoadedJob, NoEvents, Plan, RescheduleResult, ServiceEvents, plan_of

log = logging.getLogger("paramsched.jobs")


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
    ) -> None:
        self.store = store
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
            or entry.spec_hash != record.spec_hash
            or entry.generation != record.generation
            or entry.num_changes != record.num_changes
        ):
            spec = self._spec_for(record)
            if record.overrides is None:  # a reply that left out changes we should hold
                raise AssertionError("record without its changes for an uncached schedule")
            overrides = list(record.overrides)
            entry = LoadedJob(record.spec_hash, record.generation, record.num_changes, spec,
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
        try:
            record = await self.store.get(job_id)
        except StoreUnavailable as exc:
            raise Unavailable(f"job store unavailable: {exc}") from None
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
        return plan_of(entry.spec, entry.schedule, start, stop, values, record.generation)

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
    ) -> tuple[JobView, bool, Plan]:
        """Create the job from ``spec_data``, or join it (``spec_data=None``)."""
        check_job_id(job_id)
        if world_size < 0:
            raise InvalidArgument(f"must be >= 0, got {world_size}", field="world_size")
        if rank < 0 or (world_size and rank >= world_size):
            raise InvalidArgument(f"rank {rank} is outside world_size {world_size}", field="rank")
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
                              created_at=time.time())
            try:
                record, created = await self.store.create(fresh)
            except StoreUnavailable as exc:
                raise Unavailable(f"job store unavailable: {exc}") from None
            if not created and record.spec_hash != spec_hash:
                assert record.spec is not None
                diff = "; ".join(spec_difference(record.spec, canonical)) or "specs differ"
                raise AlreadyExists(f"job {job_id!r} exists with a different spec: {diff}")
            self._specs.setdefault(spec_hash, spec)
            if created:
                log.info("job created", extra=self._event("created", job_id, rank, 1))
        entry = self._loaded(record)
        # The plan from iteration 0 is handed out too: record it, so no change can alter
        # it (and the rank shows up in the job's progress).
        try:
            record = await self.store.report(
                job_id, generation=record.generation, rank=rank, iteration=0,
                issue_until=min(size, entry.schedule.max_iters + 1),
                known_spec_hash=entry.spec_hash, known_changes=entry.num_changes)
        except StoreUnavailable as exc:
            raise Unavailable(f"job store unavailable: {exc}") from None
        except (JobNotFound, StaleGeneration) as exc:  # deleted or resumed just now
            raise FailedPrecondition(f"job {job_id!r} changed while attaching ({exc}); "
                                     "attach again") from None
        if record.overrides is not None or record.spec is None:
            record.spec = entry.spec.to_dict()
            entry = self._loaded(record)
        plan = await self._plan(entry, record, 0, size)
        self.events.plan_issued(job_id, len(plan.values))
        return JobView.of(record, entry), created, plan

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
            try:
                records = await self.store.list(prefix, after, limit + 1)
            except StoreUnavailable as exc:
                raise Unavailable(f"job store unavailable: {exc}") from None
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
        try:
            deleted = await self.store.delete(job_id, entry)
        except StoreUnavailable as exc:
            raise Unavailable(f"job store unavailable: {exc}") from None
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
    ) -> Plan:
        """Record a rank's progress (and an epoch's decision); return its next plan.

        ``metrics=None`` with ``epoch_end`` set means no validation ran after that epoch.
        """
        check_job_id(job_id)
        if rank < 0:
            raise InvalidArgument(f"must be >= 0, got {rank}", field="rank")
        if iteration < 0:
            raise InvalidArgument(f"must be >= 0, got {iteration}", field="iteration")
        if generation < 1:
            raise InvalidArgument(f"must be >= 1, got {generation}", field="generation")
        size = self._plan_size(plan_size)
        entry = self._jobs.get(job_id)
        if entry is None or entry.generation != generation:
            record = await self._get_record(job_id)
            if record.generation != generation:
                self._fenced(job_id, rank, generation)
                raise FailedPrecondition(str(StaleGeneration(job_id, generation,
                                                             record.generation)))
            entry = self._loaded(record)
        if iteration > entry.schedule.max_iters:
            raise InvalidArgument(
                f"iteration {iteration} is past the end of training "
                f"({entry.schedule.max_iters})", field="iteration")
        decision = self._decision(entry, iteration, epoch_end, metrics)
        try:
            record = await self.store.report(
                job_id, generation=generation, rank=rank, iteration=iteration,
                decision=decision,
                issue_until=min(iteration + size, entry.schedule.max_iters + 1),
                known_spec_hash=entry.spec_hash, known_changes=entry.num_changes)
        except StoreUnavailable as exc:
            raise Unavailable(f"job store unavailable: {exc}") from None
        except JobNotFound:
            self._forget(job_id)
            raise NotFound(f"job {job_id!r} does not exist") from None
        except StaleGeneration as exc:
            self._forget(job_id)
            self._fenced(job_id, rank, generation)
            raise FailedPrecondition(str(exc)) from None
        if record.overrides is not None or (
                record.spec is not None and record.spec_hash != entry.spec_hash):
            # A change came in, or the job was deleted and recreated meanwhile.
            if record.spec is None:
                record.spec = entry.spec.to_dict()
            entry = self._loaded(record)
        plan = await self._plan(entry, record, iteration, iteration + size)
        self.events.job_reported(job_id)
        self.events.plan_issued(job_id, len(plan.values))
        return plan

    def _fenced(self, job_id: str, rank: int, generation: int) -> None:
        self.events.report_fenced(job_id)
        log.warning("report refused: stale generation",
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
            self.limits.check_metrics(metrics, "metrics")
            for name, value in metrics.items():
                if not isinstance(value, int | float) or not math.isfinite(value):
                    raise InvalidArgument(f"must be a finite number, got {value!r}",
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
    async def get_state(self, job_id: str, iteration: int, *, generation: int = 0) -> str:
        """The schedule state at ``iteration`` (iterations done) as canonical JSON.

        With ``generation`` (the caller's), a caller from an older generation is refused:
        its checkpoint would carry the new generation's decisions as if they were its own.
        """
        check_job_id(job_id)
        record = await self._get_record(job_id)
        if generation and generation != record.generation:
            raise FailedPrecondition(str(StaleGeneration(job_id, generation, record.generation)))
        entry = self._loaded(record)
        spec = entry.spec
        if not 0 <= iteration <= entry.schedule.max_iters:
            raise InvalidArgument(
                f"must be in [0, {entry.schedule.max_iters}], got {iteration}",
                field="iteration")
        try:
            audit = await self.store.audit(job_id)
        except StoreUnavailable as exc:
            raise Unavailable(f"job store unavailable: {exc}") from None
        length = spec.epoch_length or 0
        done_epochs = iteration // length if spec.epoch_based and length else 0
        decisions = {str(e): m for e, m in sorted(record.decisions.items()) if e < done_epochs}
        state = {
            "format": STATE_FORMAT,
            "job_id": job_id,
            "generation": record.generation,
            "iteration": iteration,
            "spec": record.spec,
            "decisions": decisions,
            "overrides": entry.overrides,
            "audit": audit,
        }
        return canonical_json(state)

    async def load_state(
        self, job_id: str, state_json: str, *, plan_size: int = 0, world_size: int = 0
    ) -> tuple[JobView, Plan, bool]:
        """Resume ``job_id`` from a checkpoint state (into an empty store too)."""
        check_job_id(job_id)
        size = self._plan_size(plan_size)
        state = parse_state(state_json)
        spec = parse_spec(state["spec"], prefix="state.spec", limits=self.limits)
        canonical = spec.to_dict()
        decisions = parse_decisions(state["decisions"], spec)
        overrides = state.get("overrides") or []
        schedule = checked_changes(spec, overrides, decisions)
        iteration = state["iteration"]
        if not isinstance(iteration, int) or not 0 <= iteration <= schedule.max_iters:
            raise InvalidArgument(f"must be an integer in [0, {schedule.max_iters}]",
                                  field="state.iteration")
        generation = state["generation"]
        if not isinstance(generation, int) or generation < 1:
            raise InvalidArgument("must be an integer >= 1", field="state.generation")
        trail = state.get("audit") or []
        if not isinstance(trail, list) or not all(isinstance(e, dict) for e in trail):
            raise InvalidArgument("must be a list of objects", field="state.audit")
        entry_data = self._audit_entry("resume", iteration, generation,
                                       details={"checkpoint_generation": generation})
        try:
            record, resumed = await self.store.load_state(
                job_id, spec=canonical, spec_hash=content_hash(canonical),
                decisions=decisions, progress={}, min_generation=generation + 1,
                state_hash=content_hash(state), world_size=world_size,
                created_at=time.time(), overrides=overrides, audit_entries=trail,
                audit_entry=entry_data,
                issue_until=min(iteration + size, schedule.max_iters + 1))
        except StoreUnavailable as exc:
            raise Unavailable(f"job store unavailable: {exc}") from None
        entry = self._loaded(record)
        plan = await self._plan(entry, record, iteration, iteration + size)
        if resumed:
            log.info("job resumed from a checkpoint at iteration %d", iteration,
                     extra=self._event("resumed", job_id, None, record.generation))
        self.events.plan_issued(job_id, len(plan.values))
        return JobView.of(record, entry), plan, resumed

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
    ) -> RescheduleResult:
        """Change a job's schedule from ``change["from_iteration"]`` (default: the earliest
        iteration no plan covers) for every rank. See ``schedules.reschedule``."""
        check_job_id(job_id)
        if not 0 < preview <= 100_000:
            raise InvalidArgument("must be in [1, 100000]", field="preview_iterations")
        for _attempt in range(5):
            record = await self._get_record(job_id)
            entry = self._loaded(record)
            data = dict(change)
            earliest = max([record.issued_until] + [o.start for o in entry.schedule.overrides])
            if data.get("from_iteration") is None:
                data["from_iteration"] = earliest
            start = data["from_iteration"]
            if isinstance(start, int) and start < earliest:
                raise FailedPrecondition(
                    f"job {job_id!r}: iteration {start} is too early; values up to iteration "
                    f"{earliest - 1} were already handed out to ranks, so the earliest "
                    f"iteration a change can take effect is {earliest}")
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
            if dry_run:
                return result
            try:
                record = await self.store.reschedule(
                    job_id, generation=record.generation, expected_changes=record.num_changes,
                    override=data, audit_entry=audit)
            except ChangeConflict:
                continue  # another change landed meanwhile: compute this one again
            except TooEarly as exc:
                if change.get("from_iteration") is None:
                    continue  # ranks moved on meanwhile: the earliest iteration is later now
                raise FailedPrecondition(str(exc)) from None
            except StaleGeneration as exc:
                raise FailedPrecondition(str(exc)) from None
            except JobNotFound:
                raise NotFound(f"job {job_id!r} does not exist") from None
            except StoreUnavailable as exc:
                raise Unavailable(f"job store unavailable: {exc}") from None
            entry = self._loaded(record)
            log.info("job rescheduled (%s) from iteration %d", action, override.start,
                     extra=self._event("rescheduled", job_id, None, record.generation))
            return RescheduleResult(JobView.of(record, entry), result.from_iteration,
                                    result.before, result.after, True, audit,
                                    result.before_at, result.after_at)
        raise FailedPrecondition(f"job {job_id!r} kept changing; try again")

    async def history(self, job_id: str) -> JsonObjects:
        """A job id's audit trail (it outlives the job)."""
        check_job_id(job_id)
        try:
            trail = await self.store.audit(job_id)
        except StoreUnavailable as exc:
            raise Unavailable(f"job store unavailable: {exc}") from None
        if not trail:
            await self._get_record(job_id)  # NOT_FOUND for an id that never had a job
        return trail
