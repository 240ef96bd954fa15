"""Servers for the client tests.

* ``FakeScheduler``: an in-process gRPC servicer that follows the protocol of
  ``scheduler.proto`` on top of the real schedule engine (``paramsched.server.schedules``),
  with fault injection (UNAVAILABLE, delays) and a log of every request. It lets the
  client be tested precisely (which RPCs the hot path makes, what happens while the
  server is down) without depending on the service layer.
* ``ServerProcess``: the real server, started the way a user starts it
  (``paramsched serve --port P --data-dir D``), killable with SIGKILL and restartable on
  the same port and data dir.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from paramsched.api.v1 import scheduler_pb2, scheduler_pb2_grpc
from paramsched.server.grpc.servicer import spec_to_proto
from paramsched.server.schedules import (
    ConfigError,
    MetricsError,
    Timeline,
    build_job_spec,
)

# --------------------------------------------------------------------------- fake servicer


def spec_inputs(spec: scheduler_pb2.JobSpec) -> dict[str, Any]:
    """The engine's ``build_job_spec`` keyword arguments from a wire spec."""
    groups: list[dict[str, Any]] = []
    for group in spec.initial_values:
        values: dict[str, Any] = dict(group.values)
        if group.betas:
            values["betas"] = list(group.betas)
        groups.append(values)
    return {
        "param_scheduler": json.loads(spec.param_scheduler_json),
        "initial_values": groups,
        "epoch_length": spec.epoch_length if spec.HasField("epoch_length") else None,
        "max_epochs": spec.max_epochs if spec.HasField("max_epochs") else None,
        "max_iters": spec.max_iters if spec.HasField("max_iters") else None,
    }


@dataclass
class FakeJob:
    job_id: str
    spec: scheduler_pb2.JobSpec
    inputs: dict[str, Any]
    timeline: Timeline
    world_size: int
    generation: int = 1
    decisions: dict[int, dict[str, float] | None] = field(default_factory=dict)
    loaded: set[str] = field(default_factory=set)
    progress: dict[int, int] = field(default_factory=dict)


class FakeScheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
    """The protocol's semantics on the real engine; one lock, everything in memory."""

    def __init__(self) -> None:
        self.jobs: dict[str, FakeJob] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, Any]] = []
        self.down = False  # every call fails with UNAVAILABLE
        self.fail_next: list[grpc.StatusCode] = []  # the next calls fail with these
        self.delay = 0.0
        self.max_plan = 10_000

    # -- helpers -------------------------------------------------------------------
    def _enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.requests.append((method, request))
            code = self.fail_next.pop(0) if self.fail_next else None
        if self.delay:
            time.sleep(self.delay)
        if self.down:
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake server is down")
        if code is not None:
            context.abort(code, f"injected {code.name}")

    def calls(self, method: str) -> list[Any]:
        with self.lock:
            return [r for m, r in self.requests if m == method]

    def _job(self, job_id: str, context: grpc.ServicerContext) -> FakeJob:
        job = self.jobs.get(job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id!r} not found")
        assert job is not None
        return job

    def _build(self, job_id: str, spec: scheduler_pb2.JobSpec, world: int, ctx: Any) -> FakeJob:
        inputs = spec_inputs(spec)
        try:
            engine_spec = build_job_spec(**inputs)
        except ConfigError as exc:
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return FakeJob(job_id, spec, inputs, Timeline(engine_spec), world)

    def _job_message(self, job: FakeJob) -> scheduler_pb2.Job:
        spec = job.timeline.spec
        message = scheduler_pb2.Job(
            job_id=job.job_id,
            spec=job.spec,
            generation=job.generation,
            world_size=job.world_size,
            params=list(spec.params),
            num_groups=spec.num_groups,
            momentum_via_betas=spec.momentum_via_betas,
            max_iters=spec.max_iters,
        )
        if spec.epoch_length is not None:
            message.epoch_length = spec.epoch_length
        for rank, iteration in sorted(job.progress.items()):
            message.progress.add(rank=rank, iteration=iteration)
        return message

    def _plan(self, job: FakeJob, start: int, size: int) -> scheduler_pb2.Plan:
        spec = job.timeline.spec
        size = min(size or 64, self.max_plan)
        stop = min(start + size, spec.max_iters + 1)
        rows = job.timeline.values_range(start, max(stop, start + 1), job.decisions, partial=True)
        rows = rows[: max(0, stop - start)]
        plan = scheduler_pb2.Plan(
            start_iteration=start,
            num_iterations=len(rows),
            params=list(spec.params),
            num_groups=spec.num_groups,
            generation=job.generation,
        )
        for groups in rows:
            for group in groups:
                plan.values.extend(group[p] for p in spec.params)
        end = start + len(rows)
        if end < stop and spec.epoch_length:
            plan.waits_for_epoch = end // spec.epoch_length - 1
        return plan

    # -- RPCs ----------------------------------------------------------------------
    def AttachJob(self, request: Any, context: Any) -> scheduler_pb2.AttachJobResponse:
        self._enter("AttachJob", request, context)
        with self.lock:
            job = self.jobs.get(request.job_id)
            created = False
            if request.HasField("spec"):
                if job is None:
                    job = self._build(request.job_id, request.spec, request.world_size, context)
                    self.jobs[request.job_id] = job
                    created = True
                elif spec_inputs(request.spec) != job.inputs:
                    context.abort(grpc.StatusCode.ALREADY_EXISTS, "job exists with another spec")
            elif job is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id!r} not found")
            assert job is not None
            return scheduler_pb2.AttachJobResponse(
                job=self._job_message(job),
                created=created,
                plan=self._plan(job, 0, request.plan_size),
            )

    def GetJob(self, request: Any, context: Any) -> scheduler_pb2.GetJobResponse:
        self._enter("GetJob", request, context)
        with self.lock:
            return scheduler_pb2.GetJobResponse(
                job=self._job_message(self._job(request.job_id, context))
            )

    def ReportProgress(self, request: Any, context: Any) -> scheduler_pb2.ReportProgressResponse:
        self._enter("ReportProgress", request, context)
        with self.lock:
            job = self._job(request.job_id, context)
            if request.generation != job.generation:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"generation {request.generation} is stale (job at {job.generation})",
                )
            if not 0 <= request.iteration <= job.timeline.spec.max_iters:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "iteration out of range")
            if request.HasField("epoch_end"):
                epoch = request.epoch_end
                metrics = dict(request.metrics) if request.has_metrics else None
                try:
                    job.timeline.check_metrics(epoch, metrics)
                except MetricsError as exc:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                job.decisions.setdefault(epoch, metrics)
            job.progress[request.rank] = max(job.progress.get(request.rank, 0), request.iteration)
            plan = self._plan(job, request.iteration, request.plan_size)
            return scheduler_pb2.ReportProgressResponse(plan=plan)

    def GetValues(self, request: Any, context: Any) -> scheduler_pb2.GetValuesResponse:
        self._enter("GetValues", request, context)
        with self.lock:
            job = self._job(request.job_id, context)
            stop = request.stop_iteration or job.timeline.spec.max_iters + 1
            plan = self._plan(job, request.start_iteration, stop - request.start_iteration)
            return scheduler_pb2.GetValuesResponse(plan=plan)

    def GetState(self, request: Any, context: Any) -> scheduler_pb2.GetStateResponse:
        self._enter("GetState", request, context)
        with self.lock:
            job = self._job(request.job_id, context)
            if request.generation and request.generation != job.generation:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "stale generation")
            state = {
                "job_id": job.job_id,
                "spec": job.inputs,
                "generation": job.generation,
                "iteration": request.iteration,
                "decisions": {str(e): m for e, m in job.decisions.items()},
            }
            return scheduler_pb2.GetStateResponse(state_json=json.dumps(state))

    def LoadState(self, request: Any, context: Any) -> scheduler_pb2.LoadStateResponse:
        self._enter("LoadState", request, context)
        state = json.loads(request.state_json)
        with self.lock:
            job = self.jobs.get(request.job_id)
            resumed = job is None or request.state_json not in job.loaded
            if resumed:
                spec = spec_to_proto(state["spec"])
                new = self._build(request.job_id, spec, 0, context)
                new.generation = max(state["generation"], job.generation if job else 0) + 1
                new.decisions = {int(e): m for e, m in state["decisions"].items()}
                new.loaded = {request.state_json}
                self.jobs[request.job_id] = job = new
            assert job is not None
            return scheduler_pb2.LoadStateResponse(
                job=self._job_message(job),
                plan=self._plan(job, state["iteration"], request.plan_size),
                resumed=resumed,
            )


@contextlib.contextmanager
def fake_server(servicer: FakeScheduler | None = None) -> Iterator[tuple[FakeScheduler, str]]:
    """Serve a ``FakeScheduler`` on 127.0.0.1 (free port); yields it and its address."""
    servicer = servicer or FakeScheduler()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
