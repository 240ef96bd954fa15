"""The admin API: list, read, audit, delete and change jobs; preview schedules.

These are methods of ``paramsched.Client`` (through ``AdminMixin``) and need no torch.
The ``paramsched`` command line is a thin layer on them: every command is one method
with the same arguments, so anything an operator does in a shell a script can do::

    from paramsched import Client

    with Client("127.0.0.1:50051") as client:
        for job in client.list_jobs(prefix="team-a-"):
            print(job.job_id, job.furthest_iteration, "/", job.max_iters)
        result = client.decay("llm-7b", "lr", to=3e-5, over=2000, shape="cosine",
                              dry_run=True)
        print(result.before.at(result.from_iteration), result.after.at(result.until))

Every change is one ``RescheduleJob`` request described by a frozen ``Change``; it
takes effect at iteration *s* (``from_iteration``; by default the first iteration no
plan handed out covers) for every rank. ``dry_run=True`` changes nothing and returns
the values before and after. Results are typed and frozen (``paramsched.client.results``).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from paramsched.api.v1 import scheduler_pb2 as pb

from ._rpc import Connection
from .errors import InvalidArgumentError, ParamschedError
from .jobspec import Bounds, job_spec
from .results import AuditEntry, ChangeResult, JobInfo, Values

Mode = Literal["replace", "multiply", "stretch"]
MODES: dict[str, pb.RescheduleJobRequest.Mode] = {
    "replace": pb.RescheduleJobRequest.REPLACE,
    "multiply": pb.RescheduleJobRequest.MULTIPLY,
    "stretch": pb.RescheduleJobRequest.STRETCH,
}
#: values asked per range by ``values`` (each range comes in the server's pages), so
#: its ``progress`` is called as they arrive.
VALUES_PER_CALL = 200_000
#: times a paged fetch starts again from its first page when the job changed meanwhile
#: (a resume or a change makes the next page's token stale).
STALE_RESTARTS = 3
#: the server's limit on RescheduleJob.preview_iterations.
MAX_PREVIEW_ITERATIONS = 100_000
#: before/after values a change returns by default beyond the ones it needs.
DEFAULT_PREVIEW = 100


class _Stale(Exception):
    """A page token went stale: the job changed between two pages."""


class JobFinishedError(InvalidArgumentError):
    """The job has handed out the values of every iteration: no change can take effect."""


# -- changes, parsed once -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Change:
    """One schedule change, as the server gets it (``to_request``).

    ``span``: how many iterations from *s* on the change shapes (``decay --over N``:
    N), None for "to the end of training"; it sizes the preview and the warnings.
    """

    job_id: str
    mode: Mode = "replace"
    param_scheduler: tuple[Mapping[str, Any], ...] = ()
    params: tuple[str, ...] = ()
    groups: tuple[int, ...] = ()
    start_values: Mapping[str, float] = field(default_factory=dict)
    max_iters: int | None = None
    from_iteration: int | None = None
    action: str = "reschedule"
    reason: str = ""
    force: bool = False
    dry_run: bool = False
    span: int | None = None
    target: Mapping[str, float] = field(default_factory=dict)  # values the change aims at

    def __post_init__(self) -> None:
        if not isinstance(self.job_id, str) or not self.job_id:
            raise ValueError(f"job_id must be a non-empty string, got {self.job_id!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, got {self.mode!r}")
        if self.from_iteration is not None and self.from_iteration < 0:
            raise ValueError(f"from_iteration must be >= 0, got {self.from_iteration}")
        if self.max_iters is not None and self.max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {self.max_iters}")
        for name, value in self.start_values.items():
            if not math.isfinite(value):
                raise ValueError(f"start value of {name!r} must be finite, got {value}")

    def to_request(self, preview_iterations: int = 0) -> pb.RescheduleJobRequest:
        request = pb.RescheduleJobRequest(
            job_id=self.job_id, mode=MODES[self.mode],
            param_scheduler_json=json.dumps([dict(c) for c in self.param_scheduler]),
            params=list(self.params), groups=list(self.groups),
            start_values=dict(self.start_values), dry_run=self.dry_run, force=self.force,
            action=self.action, reason=self.reason, preview_iterations=preview_iterations)
        if self.from_iteration is not None:
            request.from_iteration = self.from_iteration
        if self.max_iters is not None:
            request.max_iters = self.max_iters
        return request


def _common(groups: Sequence[int] | None, from_iteration: int | None, reason: str,
            force: bool, dry_run: bool) -> dict[str, Any]:
    return {"groups": tuple(groups or ()), "from_iteration": from_iteration,
            "reason": reason, "force": force, "dry_run": dry_run}


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _span(configs: Sequence[Mapping[str, Any]]) -> int | None:
    """The iterations a list of configs shapes from *s*: the largest iteration-based
    ``end`` (None when any config runs to the end of training)."""
    ends = []
    for config in configs:
        end = config.get("end")
        if config.get("by_epoch", True) or not isinstance(end, int):
            return None
        ends.append(end - 1)
    return max(ends) if ends else None


def reschedule_change(job_id: str, param_scheduler: Any = None, *, mode: Mode = "replace",
                      params: Sequence[str] | None = None,
                      start_values: Mapping[str, float] | None = None,
                      max_iters: int | None = None, groups: Sequence[int] | None = None,
                      from_iteration: int | None = None, reason: str = "",
                      force: bool = False, dry_run: bool = False) -> Change:
    if isinstance(param_scheduler, Mapping):
        param_scheduler = [param_scheduler]
    configs = tuple(dict(c) for c in (param_scheduler or ()))
    span = _span(configs) if configs and mode != "stretch" else None
    return Change(job_id, mode, configs, tuple(params or ()),
                  start_values=dict(start_values or {}), max_iters=max_iters, span=span,
                  **_common(groups, from_iteration, reason, force, dry_run))


def set_change(job_id: str, param: str, value: float, **common: Any) -> Change:
    value = _finite("value", value)
    return Change(job_id, "replace", params=(param,), start_values={param: value},
                  action="set", target={param: value}, **_common(**_defaults(common)))


def scale_change(job_id: str, param: str, factor: float, **common: Any) -> Change:
    factor = _finite("factor", factor)
    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    return Change(job_id, "multiply", params=(param,), start_values={param: factor},
                  action="scale", **_common(**_defaults(common)))


def hold_change(job_id: str, param: str, **common: Any) -> Change:
    return Change(job_id, "replace", params=(param,), action="hold",
                  **_common(**_defaults(common)))


def decay_change(job_id: str, param: str, *, to: float, over: int,
                 shape: Literal["linear", "cosine"] = "linear", **common: Any) -> Change:
    """Reach ``to`` at *s* + ``over`` (then hold it): Poly (power 1) or CosineAnnealing."""
    to, over = _finite("to", to), _positive_int("over", over)
    if shape == "cosine":
        config: dict[str, Any] = {"type": "CosineAnnealingParamScheduler", "param_name": param,
                                  "T_max": over, "eta_min": to, "by_epoch": False,
                                  "end": over + 1}
    elif shape == "linear":
        config = {"type": "PolyParamScheduler", "param_name": param, "eta_min": to,
                  "power": 1.0, "by_epoch": False, "end": over + 1}
    else:
        raise ValueError(f"shape must be 'linear' or 'cosine', got {shape!r}")
    return Change(job_id, "replace", (config,), (param,), action="decay", span=over,
                  target={param: to}, **_common(**_defaults(common)))


def rewarm_change(job_id: str, param: str, *, from_factor: float, over: int,
                  **common: Any) -> Change:
    """Multiply the curve by a factor ramping linearly from ``from_factor`` to 1."""
    from_factor, over = _finite("from_factor", from_factor), _positive_int("over", over)
    if not 0 < from_factor <= 1:
        raise ValueError(f"from_factor must be in (0, 1], got {from_factor}")
    config = {"type": "LinearParamScheduler", "param_name": param, "start_factor": from_factor,
              "end_factor": 1.0, "by_epoch": False, "end": over + 1}
    return Change(job_id, "multiply", (config,), (param,), action="rewarm", span=over,
                  **_common(**_defaults(common)))


def extend_change(job_id: str, *, max_iters: int, **common: Any) -> Change:
    """Stretch the remaining curve onto ``max_iters`` (extends or shortens training)."""
    return Change(job_id, "stretch", max_iters=_positive_int("max_iters", max_iters),
                  action="extend", **_common(**_defaults(common)))


def _defaults(common: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(common) - {"groups", "from_iteration", "reason", "force", "dry_run"}
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    return {"groups": common.get("groups"), "from_iteration": common.get("from_iteration"),
            "reason": common.get("reason", ""), "force": bool(common.get("force", False)),
            "dry_run": bool(common.get("dry_run", False))}


# -- the API --------------------------------------------------------------------------
class AdminMixin:
    """Admin methods of ``Client``; they use its connection and ``wait_timeout``.

    A server this client never reached that refuses the connection raises
    ``ScheduleUnavailableError`` at once (a wrong address, or no server started);
    otherwise transport failures are retried for up to ``wait_timeout`` seconds.
    """

    _conn: Connection
    wait_timeout: float

    def _admin_call(self, method: str, request: Any, what: str) -> Any:
        return self._conn.call(getattr(self._conn.stub, method), request, what=what,
                               wait=self.wait_timeout, fail_fast=True)

    # -- reading ----------------------------------------------------------------------
    def list_jobs(self, prefix: str = "") -> list[JobInfo]:
        """Every job whose id starts with ``prefix`` (those the token may see), by id."""
        return list(self.iter_jobs(prefix))

    def iter_jobs(self, prefix: str = "") -> Iterator[JobInfo]:
        """``list_jobs`` a page at a time."""
        token = ""
        while True:
            reply = self._admin_call("ListJobs", pb.ListJobsRequest(prefix=prefix,
                                                                     page_token=token),
                                     "listing jobs")
            yield from (JobInfo.from_proto(job) for job in reply.jobs)
            token = reply.next_page_token
            if not token:
                return

    def get_job(self, job_id: str) -> JobInfo:
        """The server's record of a job (``JobNotFoundError`` if absent)."""
        reply = self._admin_call("GetJob", pb.GetJobRequest(job_id=job_id),
                                 f"reading job {job_id!r}")
        return JobInfo.from_proto(reply.job)

    def values(self, job_id: str, start: int = 0, stop: int | None = None, *,
               stride: int = 1, progress: Callable[[int], None] | None = None) -> Values:
        """A job's values for iterations ``[start, stop)`` (``stop=None``: to the end,
        ``max_iters`` included), or every ``stride``-th of them (for plots of long jobs),
        fetched range by range in the server's pages (``progress`` is called with the
        count fetched so far). They stop early at a pending ReduceOnPlateau decision
        (``Values.waits_for_epoch``). A job resumed or changed meanwhile is read again
        from ``start``, so the values are those of one state of the job."""
        stride = _positive_int("stride", stride)
        for attempt in range(STALE_RESTARTS + 1):
            try:
                return self._values_once(job_id, start, stop, stride, progress)
            except _Stale:
                if attempt == STALE_RESTARTS:
                    raise self._kept_changing(job_id) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _values_once(self, job_id: str, start: int, stop: int | None, stride: int,
                     progress: Callable[[int], None] | None) -> Values:
        job = self.get_job(job_id)
        if stop is None:
            stop = job.max_iters + 1
        out: Values | None = None
        t = start
        per_call = max(1, VALUES_PER_CALL // max(1, job.num_groups * len(job.params)))
        while t < stop or out is None:
            request = pb.GetValuesRequest(job_id=job_id, start_iteration=t, stride=stride,
                                          stop_iteration=min(stop, t + per_call * stride))
            done = len(out) if out is not None else 0
            chunk = self._paged("GetValues", request, f"reading the values of job {job_id!r}",
                                restart=False, progress=progress, done=done)
            if out is not None and chunk.rows and chunk.generation != out.generation:
                raise _Stale()  # resumed between two ranges
            out = chunk if out is None else out.joined(chunk)
            width = max(1, chunk.num_groups * len(chunk.params))
            per_call = max(1, VALUES_PER_CALL // width)
            if not chunk.rows or chunk.waits_for_epoch is not None:
                break
            t = chunk.stop
        return out

    def get_values(self, job_id: str, start_iteration: int = 0, stop_iteration: int = 0, *,
                   stride: int = 1) -> list[list[dict[str, float]]]:
        """A job's values per iteration and group (``stop_iteration=0``: to the end),
        every ``stride``-th iteration, all pages; ``values`` is the typed form."""
        request = pb.GetValuesRequest(job_id=job_id, start_iteration=start_iteration,
                                      stop_iteration=stop_iteration,
                                      stride=_positive_int("stride", stride))
        values = self._paged("GetValues", request, f"reading the values of job {job_id!r}",
                             fail_fast=False)
        return [list(row) for row in values.rows]

    def _paged(self, method: str, request: Any, what: str, *, restart: bool = True,
               fail_fast: bool = True, progress: Callable[[int], None] | None = None,
               done: int = 0) -> Values:
        """Every page of a ``GetValues`` / ``PreviewSchedule`` request, joined; after
        each, ``progress`` gets ``done`` + the rows so far. A stale page token (the job
        changed between pages) starts again from the first page (``restart``), or
        raises ``_Stale`` for the caller to start again."""
        for _attempt in range(STALE_RESTARTS + 1):
            request.page_token = ""
            out: Values | None = None
            try:
                while True:
                    reply = self._conn.call(getattr(self._conn.stub, method), request,
                                            what=what, wait=self.wait_timeout,
                                            fail_fast=fail_fast)
                    page = Values.from_plan(reply.plan)
                    out = page if out is None else out.joined(page)
                    if progress is not None:
                        progress(done + len(out))
                    if not reply.next_page_token:
                        return out
                    request.page_token = reply.next_page_token
            except InvalidArgumentError as exc:
                fields = [f for f, _ in getattr(exc, "field_violations", ())]
                if not request.page_token or fields != ["page_token"]:
                    raise
                if not restart:
                    raise _Stale() from None
        raise self._kept_changing(getattr(request, "job_id", "") or "(preview)")

    @staticmethod
    def _kept_changing(job_id: str) -> ParamschedError:
        return ParamschedError(f"the values of job {job_id!r} changed while they were read "
                               f"({STALE_RESTARTS + 1} times: resumed or changed meanwhile); "
                               "read them again")

    def history(self, job_id: str) -> list[AuditEntry]:
        """The job's audit trail, oldest first: changes, resumes, deletion."""
        reply = self._admin_call("GetJobHistory", pb.GetJobHistoryRequest(job_id=job_id),
                                 f"reading the history of job {job_id!r}")
        return [AuditEntry.from_proto(e) for e in reply.entries]

    def delete_job(self, job_id: str) -> bool:
        """Delete a job; False if there was no such job. Ranks still attached to it are
        fenced. Audited."""
        reply = self._admin_call("DeleteJob", pb.DeleteJobRequest(job_id=job_id),
                                 f"deleting job {job_id!r}")
        return bool(reply.deleted)

    def preview(
        self,
        param_scheduler: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        initial_values: Sequence[Mapping[str, Any]],
        *,
        epoch_length: int | None = None,
        max_epochs: int | None = None,
        max_iters: int | None = None,
        start: int = 0,
        stop: int | None = None,
        decisions: Mapping[int, Mapping[str, float] | None] | None = None,
        bounds: Bounds | None = None,
        max_jump_factor: float | None = None,
        stride: int = 1,
    ) -> Values:
        """The values a config would give (computed by the server; no job is created),
        for every ``stride``-th iteration of ``[start, stop)``, all pages.

        ``initial_values``: one dict per param group (``{"lr": 0.1, "momentum": 0.9}``;
        ``"betas": (b1, b2)`` for Adam). ``decisions``: ReduceOnPlateau's validation
        metrics per epoch (None: no validation ran); without them the values stop at
        the first pending decision. A preview replays from iteration 0, and the server
        counts that replay in its cost budget: iterations further than the budget are
        RESOURCE_EXHAUSTED (a ``ParamschedError`` naming it).
        """
        request = pb.PreviewScheduleRequest(
            spec=job_spec(param_scheduler, initial_values, epoch_length=epoch_length,
                          max_epochs=max_epochs, max_iters=max_iters, bounds=bounds,
                          max_jump_factor=max_jump_factor),
            start_iteration=start, stop_iteration=0 if stop is None else stop,
            stride=_positive_int("stride", stride))
        for epoch, metrics in (decisions or {}).items():
            decision = request.decisions[int(epoch)]
            decision.has_metrics = metrics is not None
            decision.metrics.update(dict(metrics or {}))
        return self._paged("PreviewSchedule", request, "previewing a schedule")

    # -- changing ---------------------------------------------------------------------
    def reschedule(self, job_id: str, param_scheduler: Any = None, *, mode: Mode = "replace",
                   params: Sequence[str] | None = None,
                   start_values: Mapping[str, float] | None = None,
                   max_iters: int | None = None, groups: Sequence[int] | None = None,
                   from_iteration: int | None = None, reason: str = "", force: bool = False,
                   dry_run: bool = False) -> ChangeResult:
        """Change a job's schedule from iteration *s* on (``paramsched reschedule``).

        ``param_scheduler``: MMEngine configs whose ``begin``/``end`` count from *s*.
        ``mode``: ``replace`` (they replace the remaining schedule of ``params``,
        starting from the values in force at *s* or ``start_values``), ``multiply``
        (they shape a factor from 1.0 on the current curve) or ``stretch`` (the rest
        of the curve is resampled onto ``max_iters``).
        """
        return self.change(reschedule_change(
            job_id, param_scheduler, mode=mode, params=params, start_values=start_values,
            max_iters=max_iters, groups=groups, from_iteration=from_iteration, reason=reason,
            force=force, dry_run=dry_run))

    def set(self, job_id: str, param: str, value: float, *, groups: Sequence[int] | None = None,
            from_iteration: int | None = None, reason: str = "", force: bool = False,
            dry_run: bool = False) -> ChangeResult:
        """Set ``param`` to ``value`` from *s* on and hold it (``paramsched set``)."""
        return self.change(set_change(job_id, param, value, groups=groups,
                                      from_iteration=from_iteration, reason=reason,
                                      force=force, dry_run=dry_run))

    def scale(self, job_id: str, param: str, factor: float, *,
              groups: Sequence[int] | None = None, from_iteration: int | None = None,
              reason: str = "", force: bool = False, dry_run: bool = False) -> ChangeResult:
        """Multiply the rest of ``param``'s curve by ``factor`` (it keeps its shape)."""
        return self.change(scale_change(job_id, param, factor, groups=groups,
                                        from_iteration=from_iteration, reason=reason,
                                        force=force, dry_run=dry_run))

    def hold(self, job_id: str, param: str, *, groups: Sequence[int] | None = None,
             from_iteration: int | None = None, reason: str = "", force: bool = False,
             dry_run: bool = False) -> ChangeResult:
        """Hold ``param`` at the value in force at *s* to the end of training."""
        return self.change(hold_change(job_id, param, groups=groups,
                                       from_iteration=from_iteration, reason=reason,
                                       force=force, dry_run=dry_run))

    def decay(self, job_id: str, param: str, *, to: float, over: int,
              shape: Literal["linear", "cosine"] = "linear",
              groups: Sequence[int] | None = None, from_iteration: int | None = None,
              reason: str = "", force: bool = False, dry_run: bool = False) -> ChangeResult:
        """Decay ``param`` to ``to`` over ``over`` iterations, then hold it. A decay
        that runs past the end of training never reaches ``to``: ``warnings`` says so."""
        return self.change(decay_change(job_id, param, to=to, over=over, shape=shape,
                                        groups=groups, from_iteration=from_iteration,
                                        reason=reason, force=force, dry_run=dry_run))

    def rewarm(self, job_id: str, param: str, *, from_factor: float, over: int,
               groups: Sequence[int] | None = None, from_iteration: int | None = None,
               reason: str = "", force: bool = False, dry_run: bool = False) -> ChangeResult:
        """Ramp ``param`` from ``from_factor`` times its curve back to it over ``over``."""
        return self.change(rewarm_change(job_id, param, from_factor=from_factor, over=over,
                                         groups=groups, from_iteration=from_iteration,
                                         reason=reason, force=force, dry_run=dry_run))

    def extend(self, job_id: str, *, max_iters: int, groups: Sequence[int] | None = None,
               from_iteration: int | None = None, reason: str = "", force: bool = False,
               dry_run: bool = False) -> ChangeResult:
        """Stretch the rest of the schedule onto ``max_iters`` (longer or shorter)."""
        return self.change(extend_change(job_id, max_iters=max_iters, groups=groups,
                                         from_iteration=from_iteration, reason=reason,
                                         force=force, dry_run=dry_run))

    def change(self, change: Change, *, preview_iterations: int | None = None) -> ChangeResult:
        """Send one ``Change``; the other change methods build one and call this.

        ``preview_iterations``: the before/after values to return from *s* (default:
        enough to reach the end of the change, at least 100; at most 100,000).
        """
        job = self.get_job(change.job_id)
        s = job.issued_until if change.from_iteration is None else change.from_iteration
        if change.from_iteration is None and job.finished:
            raise self._finished(job)
        end = _change_end(change, job, s)
        if preview_iterations is None:
            preview_iterations = max(DEFAULT_PREVIEW, end - s + 1)
        preview_iterations = max(1, min(MAX_PREVIEW_ITERATIONS, preview_iterations))
        what = f"{change.action} on job {change.job_id!r}"
        try:
            request = change.to_request(preview_iterations)
            if not change.dry_run:  # one id per change, kept across the retries of this call
                request.request_id = uuid.uuid4().hex
            reply = self._admin_call("RescheduleJob", request, what)
        except InvalidArgumentError as exc:
            if change.from_iteration is None and "from_iteration" in str(exc):
                latest = self.get_job(change.job_id)
                if latest.finished:
                    raise self._finished(latest) from None
            raise
        info = JobInfo.from_proto(reply.job)
        s = reply.from_iteration
        result = ChangeResult(
            job_id=change.job_id, action=change.action, applied=reply.applied,
            from_iteration=s, until=min(_change_end(change, info, s), info.max_iters),
            job=info, before=Values.from_plan(reply.before), after=Values.from_plan(reply.after),
            entry=AuditEntry.from_proto(reply.entry))
        return replace(result, warnings=_warnings(change, result))

    @staticmethod
    def _finished(job: JobInfo) -> JobFinishedError:
        if job.furthest_iteration >= job.max_iters:
            why = f"job {job.job_id!r} finished at iteration {job.max_iters}"
        else:
            why = (f"job {job.job_id!r} has no iteration left for a change: its ranks already "
                   f"hold the values of every iteration up to its end ({job.max_iters}) in "
                   "the plans handed out to them")
        return JobFinishedError(
            f"{why}; nothing was changed. To train longer, start a new job (or resume a "
            "checkpoint into one)", code=None)


def _change_end(change: Change, job: JobInfo, s: int) -> int:
    """The last iteration ``change`` shapes (the new end of training for ``extend``)."""
    if change.mode == "stretch" and change.max_iters is not None:
        return change.max_iters
    if change.span is not None:
        return s + change.span
    return max(job.max_iters, change.max_iters or 0)


def _warnings(change: Change, result: ChangeResult) -> tuple[str, ...]:
    """Where the change does not do what it asked: it runs past the end of training."""
    out: list[str] = []
    if change.span is None:
        return ()
    wanted = result.from_iteration + change.span
    last = result.job.max_iters
    if wanted > last:
        reached = ""
        if result.after.covers(last):
            row = result.after.at(last)
            shown = [f"{p} {row[g][p]:.6g} (group {g})" for p in change.params
                     for g in range(len(row)) if p in row[g]]
            reached = f"; at iteration {last}: " + ", ".join(shown) if shown else ""
        aim = ", ".join(f"{p} -> {v:.6g}" for p, v in change.target.items())
        out.append(
            f"the {change.action} runs to iteration {wanted} but the job ends at iteration "
            f"{last}: it is cut short" + (f" and never reaches its target ({aim})" if aim else "")
            + reached + f"; use a shorter over (at most {max(1, last - result.from_iteration)}) "
            "or extend the job first")
    return tuple(out)


__all__ = [
    "AdminMixin",
    "Change",
    "JobFinishedError",
    "ParamschedError",
    "decay_change",
    "extend_change",
    "hold_change",
    "reschedule_change",
    "rewarm_change",
    "scale_change",
    "set_change",
]
