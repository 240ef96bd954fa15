"""The gRPC front end: proto -> domain call -> proto. Thin on purpose.

Domain errors map to status codes in one place (``_STATUS``); anything unexpected is
logged and answered INTERNAL, so no request can take the server down.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from itertools import chain
from operator import itemgetter
from typing import Any, TypeVar

import grpc

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc

from ..errors import FailedPrecondition, InvalidArgument, ServiceError
from ..service import JobView, Plan, SchedulerService
from ..service.inputs import parse_json
from ..service.pages import Page

MODES = {pb.RescheduleJobRequest.REPLACE: "replace", pb.RescheduleJobRequest.MULTIPLY: "multiply",
         pb.RescheduleJobRequest.STRETCH: "stretch"}

log = logging.getLogger("paramsched.server")

_STATUS = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "aborted": grpc.StatusCode.ABORTED,
    "out_of_range": grpc.StatusCode.OUT_OF_RANGE,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Trailing metadata on FAILED_PRECONDITION: why the rank is fenced, in one word
# (generation, incarnation, lost), so a client can say what to do.
FENCE_REASON_KEY = "paramsched-fence-reason"

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def _mapped(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await method(self, request, context)
        except ServiceError as exc:
            reason = getattr(exc, "reason", None) if isinstance(exc, FailedPrecondition) else None
            code = _STATUS.get(exc.code, grpc.StatusCode.INTERNAL)
            await context.abort(code, str(exc), trailing_metadata=(
                ((FENCE_REASON_KEY, reason),) if reason else _bad_request(exc, code)))
        except Exception:  # never let one request take the server down
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        raise AssertionError("unreachable")  # pragma: no cover - abort() always raises

    return wrapper


def _bad_request(exc: ServiceError, code: grpc.StatusCode) -> tuple[tuple[str, bytes], ...]:
    """An argument error's field as a ``google.rpc.BadRequest`` detail (the standard
    ``grpc-status-details-bin`` trailer), so a client in any language can point at it."""
    if not isinstance(exc, InvalidArgument):
        return ()
    from google.rpc import error_details_pb2, status_pb2

    status = status_pb2.Status(code=code.value[0], message=str(exc))
    status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.reason)]))
    return (("grpc-status-details-bin", status.SerializeToString()),)


def spec_to_dict(spec: pb.JobSpec) -> dict[str, Any]:
    """A proto JobSpec as the spec dict the domain validates."""
    param_scheduler = parse_json(spec.param_scheduler_json, "spec.param_scheduler_json")
    groups = []
    dtypes = [dict(group.dtypes) for group in spec.initial_values]
    for group in spec.initial_values:
        values: dict[str, Any] = dict(group.values)
        if group.betas:
            values["betas"] = list(group.betas)
        groups.append(values)
    data: dict[str, Any] = {
        "param_scheduler": param_scheduler,
        "initial_values": groups,
        "epoch_length": spec.epoch_length if spec.HasField("epoch_length") else None,
        "max_epochs": spec.max_epochs if spec.HasField("max_epochs") else None,
        "max_iters": spec.max_iters if spec.HasField("max_iters") else None,
    }
    if spec.bounds:
        data["bounds"] = {
            name: [b.min if b.HasField("min") else None, b.max if b.HasField("max") else None]
            for name, b in spec.bounds.items()
        }
    if spec.HasField("max_jump_factor"):
        data["max_jump_factor"] = spec.max_jump_factor
    if any(dtypes):
        data["dtypes"] = dtypes
    if spec.HasField("semantics"):
        data["semantics"] = spec.semantics
    if spec.HasField("val_interval"):
        data["val_interval"] = spec.val_interval
    return data


def spec_to_proto(data: dict[str, Any]) -> pb.JobSpec:
    spec = pb.JobSpec(param_scheduler_json=json.dumps(data["param_scheduler"]))
    for group in data["initial_values"]:
        message = spec.initial_values.add()
        for key, value in group.items():
            if key == "betas":
                message.betas.extend(value)
            else:
                message.values[key] = value
    for group_dtypes, message in zip(data.get("dtypes") or (), spec.initial_values, strict=False):
        message.dtypes.update(group_dtypes)
    for key in ("epoch_length", "max_epochs", "max_iters", "max_jump_factor", "semantics",
                "val_interval"):
        if data.get(key) is not None:
            setattr(spec, key, data[key])
    for name, (low, high) in (data.get("bounds") or {}).items():
        bounds = spec.bounds[name]
        if low is not None:
            bounds.min = low
        if high is not None:
            bounds.max = high
    return spec


def flat_values(plan: Plan) -> list[float]:
    """The plan's values, iteration-major, then group, then param (``Plan.values``'s
    layout on the wire), gathered by C-level iteration: a per-value Python loop is most
    of a small plan's conversion, which every report pays on the event loop."""
    params = plan.params
    groups = chain.from_iterable(plan.values)
    if len(params) == 1:
        (name,) = params
        return [group[name] for group in groups]
    if not params:
        return []
    return list(chain.from_iterable(map(itemgetter(*params), groups)))


def plan_to_proto(plan: Plan, message: pb.Plan | None = None) -> pb.Plan:
    """``plan`` as a proto Plan; into ``message`` (e.g. a reply's own field, which saves
    copying a finished Plan into the reply) when given."""
    if message is None:
        message = pb.Plan()
    message.start_iteration = plan.start
    message.num_iterations = len(plan.values)
    message.params.extend(plan.params)
    message.num_groups = plan.num_groups
    message.values.extend(flat_values(plan))
    message.generation = plan.generation
    message.max_iters = plan.max_iters
    message.incarnation = plan.incarnation
    message.horizon_token = plan.horizon_token
    if plan.waits_for_epoch is not None:
        message.waits_for_epoch = plan.waits_for_epoch
    return message


#: Plans with more values than this are converted in a worker thread: a 2 MiB page
#: takes tens of milliseconds of Python, which the event loop must not spend.
INLINE_PLAN_CELLS = 16_384


def _inline(plan: Plan) -> bool:
    return plan.cells <= INLINE_PLAN_CELLS


async def converted(convert: Callable[[Any], pb.Plan], plan: Plan) -> pb.Plan:
    """``convert(plan)``, off the event loop when the plan is big."""
    if _inline(plan):
        return convert(plan)
    return await asyncio.to_thread(convert, plan)


async def plan_into(message: pb.Plan, plan: Plan) -> None:
    """``plan`` converted into ``message`` (a reply's field), off the loop when big."""
    if _inline(plan):
        plan_to_proto(plan, message)
    else:
        message.CopyFrom(await asyncio.to_thread(plan_to_proto, plan))


def page_to_proto(page: Page) -> pb.Plan:
    """A page of GetValues / PreviewSchedule: a plan, with its stride when > 1."""
    message = plan_to_proto(page)
    if page.stride > 1:
        message.stride = page.stride
    return message


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline on this process's monotonic clock (None: none given)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def job_to_proto(view: JobView) -> pb.Job:
    record, spec = view.record, view.spec
    job = pb.Job(
        job_id=record.job_id,
        spec=spec_to_proto(spec.to_dict()),
        generation=record.generation,
        world_size=record.world_size,
        params=view.params,
        num_groups=spec.num_groups,
        momentum_via_betas=spec.momentum_via_betas,
        max_iters=view.max_iters,
        version=record.version,
        created_at=record.created_at,
        issued_until=record.issued_until,
        num_changes=record.num_changes,
        incarnation=record.incarnation,
        run_id=record.run_id,
    )
    if spec.epoch_length is not None:
        job.epoch_length = spec.epoch_length
    for rank, iteration in sorted(record.progress.items()):
        job.progress.add(rank=rank, iteration=iteration)
    return job


#: Replies kept by their plan (see ``SchedulerServicer._reply``).
_KEPT_REPLIES = 16


class SchedulerServicer(pb_grpc.SchedulerServiceServicer):
    def __init__(self, service: SchedulerService) -> None:
        self.service = service
        self._replies: OrderedDict[int, tuple[Plan, pb.ReportProgressResponse]] = \
            OrderedDict()

    @_mapped
    async def AttachJob(self, request: pb.AttachJobRequest,
                        context: grpc.aio.ServicerContext) -> pb.AttachJobResponse:
        spec = spec_to_dict(request.spec) if request.HasField("spec") else None
        attached = await self.service.attach(
            request.job_id, spec, world_size=request.world_size, rank=request.rank,
            plan_size=request.plan_size, run_id=request.run_id, start_over=request.start_over)
        return pb.AttachJobResponse(job=job_to_proto(attached.view), created=attached.created,
                                    plan=await converted(plan_to_proto, attached.plan),
                                    resume_required=attached.resume_required)

    @_mapped
    async def GetJob(self, request: pb.GetJobRequest,
                     context: grpc.aio.ServicerContext) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=job_to_proto(await self.service.get(request.job_id)))

    @_mapped
    async def ListJobs(self, request: pb.ListJobsRequest,
                       context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        views, token = await self.service.list(request.prefix, request.page_size,
                                               request.page_token)
        return pb.ListJobsResponse(jobs=[job_to_proto(v) for v in views], next_page_token=token)

    @_mapped
    async def DeleteJob(self, request: pb.DeleteJobRequest,
                        context: grpc.aio.ServicerContext) -> pb.DeleteJobResponse:
        return pb.DeleteJobResponse(deleted=await self.service.delete(request.job_id))

    @_mapped
    async def ReportProgress(self, request: pb.ReportProgressRequest,
                             context: grpc.aio.ServicerContext) -> pb.ReportProgressResponse:
        epoch_end = request.epoch_end if request.HasField("epoch_end") else None
        validation_at = request.validation_at if request.HasField("validation_at") else None
        metrics = dict(request.metrics) if request.has_metrics else None
        if epoch_end is None and validation_at is None and request.has_metrics:
            raise InvalidArgument("metrics are only accepted with epoch_end or validation_at",
                                  field="has_metrics")
        plan = await self.service.report(
            request.job_id, generation=request.generation, rank=request.rank,
            iteration=request.iteration, epoch_end=epoch_end, validation_at=validation_at,
            metrics=metrics, plan_size=request.plan_size, incarnation=request.incarnation,
            held_until=request.held_until, horizon_token=request.horizon_token,
            skip_held=request.skip_held)
        return await self._reply(plan)

    async def _reply(self, plan: Plan) -> pb.ReportProgressResponse:
        """The reply carrying ``plan``. A job's ranks get the same plan object (the
        service shares it: ``sharedplans``), so its reply is built once and handed to
        each (gRPC only serializes it); a reply is never changed after it is built."""
        kept = self._replies.get(id(plan))
        if kept is not None and kept[0] is plan:  # (the plan held there: its id is its own)
            return kept[1]
        response = pb.ReportProgressResponse()
        await plan_into(response.plan, plan)
        self._replies[id(plan)] = (plan, response)
        if len(self._replies) > _KEPT_REPLIES:
            self._replies.popitem(last=False)
        return response

    @_mapped
    async def GetValues(self, request: pb.GetValuesRequest,
                        context: grpc.aio.ServicerContext) -> pb.GetValuesResponse:
        page = await self.service.values(
            request.job_id, request.start_iteration, request.stop_iteration,
            stride=request.stride, page_token=request.page_token, deadline=_deadline(context))
        return pb.GetValuesResponse(plan=await converted(page_to_proto, page),
                                    next_page_token=page.next_page_token)

    @_mapped
    async def GetState(self, request: pb.GetStateRequest,
                       context: grpc.aio.ServicerContext) -> pb.GetStateResponse:
        state = await self.service.get_state(request.job_id, request.iteration,
                                             generation=request.generation,
                                             incarnation=request.incarnation)
        return pb.GetStateResponse(state_json=state)

    @_mapped
    async def LoadState(self, request: pb.LoadStateRequest,
                        context: grpc.aio.ServicerContext) -> pb.LoadStateResponse:
        view, plan, resumed = await self.service.load_state(
            request.job_id, request.state_json, plan_size=request.plan_size,
            world_size=request.world_size, rank=request.rank, run_id=request.run_id,
            fork=request.fork, allow_unsigned=request.allow_unsigned)
        return pb.LoadStateResponse(job=job_to_proto(view), plan=plan_to_proto(plan),
                                    resumed=resumed)

    @_mapped
    async def PreviewSchedule(self, request: pb.PreviewScheduleRequest,
                              context: grpc.aio.ServicerContext) -> pb.PreviewScheduleResponse:
        decisions = {
            epoch: (dict(d.metrics) if d.has_metrics else None)
            for epoch, d in request.decisions.items()
        }
        page = await self.service.preview(
            spec_to_dict(request.spec), request.start_iteration, request.stop_iteration,
            decisions, stride=request.stride, page_token=request.page_token,
            deadline=_deadline(context))
        return pb.PreviewScheduleResponse(plan=await converted(page_to_proto, page),
                                          next_page_token=page.next_page_token)

    @_mapped
    async def RescheduleJob(self, request: pb.RescheduleJobRequest,
                            context: grpc.aio.ServicerContext) -> pb.RescheduleJobResponse:
        configs: Any = []
        if request.param_scheduler_json:
            configs = parse_json(request.param_scheduler_json, "param_scheduler_json")
        if isinstance(configs, dict):
            configs = [configs]
        change: dict[str, Any] = {
            "from_iteration": (request.from_iteration if request.HasField("from_iteration")
                               else None),
            "mode": MODES.get(request.mode, "replace"),
            "param_scheduler": configs,
            "params": list(request.params),
            "groups": list(request.groups),
            "start_values": dict(request.start_values),
            "max_iters": request.max_iters if request.HasField("max_iters") else None,
        }
        result = await self.service.reschedule(
            request.job_id, change, dry_run=request.dry_run, force=request.force,
            action=request.action or "reschedule", reason=request.reason,
            preview=request.preview_iterations or 100, request_id=request.request_id)
        response = pb.RescheduleJobResponse(
            job=job_to_proto(result.view), from_iteration=result.from_iteration,
            before=plan_to_proto(result.before), after=plan_to_proto(result.after),
            applied=result.applied)
        entry = result.audit or {
            "action": request.action or "reschedule", "iteration": result.from_iteration,
            "before": result.before_at, "after": result.after_at,
            "details": change, "reason": request.reason}
        response.entry.CopyFrom(audit_to_proto(entry))
        return response

    @_mapped
    async def GetJobHistory(self, request: pb.GetJobHistoryRequest,
                            context: grpc.aio.ServicerContext) -> pb.GetJobHistoryResponse:
        entries = await self.service.history(request.job_id)
        return pb.GetJobHistoryResponse(entries=[audit_to_proto(e) for e in entries])


def audit_to_proto(entry: dict[str, Any]) -> pb.AuditEntry:
    message = pb.AuditEntry(
        time=float(entry.get("time") or 0.0),
        principal=str(entry.get("principal") or ""),
        action=str(entry.get("action") or ""),
        iteration=int(entry.get("iteration") or 0),
        generation=int(entry.get("generation") or 0),
        details_json=json.dumps(entry.get("details"), sort_keys=True),
        reason=str(entry.get("reason") or ""),
    )
    for side in ("before", "after"):
        for group in entry.get(side) or []:
            getattr(message, side).add().values.update(group)
    return message
