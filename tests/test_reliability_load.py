"""Reliability under load: 256 simulated ranks over 16 jobs, two server processes, one Redis.

Each simulated rank is an asyncio gRPC client (its own channel and connection) that
attaches to its job, then reports its progress the way a training process does: every
few iterations (a different stride per rank), never past the plan it holds, at every
epoch end (with its own validation metrics, which differ between ranks), now and then
a duplicate of an earlier report (a retry). Ranks alternate between the two servers.

Afterwards: no RPC failed; for every job, every rank that received values for an
iteration received exactly the same values; and those are the engine's values given
the decisions the job recorded (GetState's decisions, the first writer's metrics).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc

from grpc_harness import InProcessServer
from process_harness import ServerProcess
from redis_harness import RedisServer
from test_service_grpc import decode, engine_values, payload_of, spec_proto

SGD = [
    {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    {"lr": 0.01, "momentum": 0.8, "weight_decay": 0.0},
]
ADAM = [{"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.01}]

# (config, param groups, loop) - warm-up + cosine, ReduceOnPlateau (three variants),
# iteration-based, OneCycle, Adam betas, generic param schedulers, restarts.
JOBS: list[tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]] = [
    ([dict(type="LinearLR", start_factor=0.01, by_epoch=False, end=7),
      dict(type="CosineAnnealingLR", T_max=6, by_epoch=True, convert_to_iter_based=True),
      dict(type="StepMomentum", step_size=2, gamma=0.5)],
     SGD, dict(epoch_length=6, max_epochs=14)),
    ([dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=4),
      dict(type="ReduceOnPlateauLR", monitor="loss", patience=0, factor=0.5)],
     SGD, dict(epoch_length=5, max_epochs=15)),
    ([dict(type="ReduceOnPlateauLR", monitor="acc", rule="greater", patience=1, factor=0.3,
           min_value=1e-4),
      dict(type="ExponentialMomentum", gamma=0.95, by_epoch=False)],
     SGD, dict(epoch_length=4, max_epochs=18)),
    ([dict(type="ReduceOnPlateauParamScheduler", param_name="weight_decay", monitor="loss",
           patience=0, factor=0.5, begin=2),
      dict(type="MultiStepLR", milestones=[3, 9], gamma=0.1)],
     SGD, dict(epoch_length=5, max_epochs=14)),
    ([dict(type="LinearLR", start_factor=0.001, by_epoch=False, end=10),
      dict(type="CosineAnnealingLR", by_epoch=False, begin=10, eta_min=1e-5)],
     SGD, dict(epoch_length=7, max_iters=80)),
    ([dict(type="OneCycleLR", eta_max=0.5, total_steps=70, by_epoch=False)],
     SGD, dict(epoch_length=5, max_iters=70)),
    ([dict(type="CosineAnnealingMomentum", T_max=50, eta_min=0.85, by_epoch=False),
      dict(type="PolyLR", power=2.0, eta_min=1e-5, by_epoch=True,
           convert_to_iter_based=True)],
     ADAM, dict(epoch_length=6, max_epochs=11)),
    ([dict(type="CosineRestartLR", periods=[9, 12, 15], restart_weights=[1, 0.5, 0.25],
           eta_min=1e-4, by_epoch=False),
      dict(type="LinearParamScheduler", param_name="weight_decay", start_factor=1.0,
           end_factor=0.1, by_epoch=True)],
     SGD, dict(epoch_length=4, max_epochs=16)),
]
PLATEAU_MONITOR = {1: "loss", 2: "acc", 3: "loss"}

NUM_JOBS = 16
RANKS_PER_JOB = 16
DEADLINE_SECONDS = 25.0  # a run takes a few seconds; this only bounds a hang


@dataclass
class JobCase:
    job_id: str
    cfg: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    loop: dict[str, int]
    monitor: str | None

    @property
    def epoch_based(self) -> bool:
        return "max_epochs" in self.loop

    def spec(self) -> pb.JobSpec:
        return spec_proto(self.cfg, self.groups, epoch_length=self.loop["epoch_length"],
                          max_epochs=self.loop.get("max_epochs"),
                          max_iters=self.loop.get("max_iters"))

    @property
    def max_iters(self) -> int:
        if self.epoch_based:
            return self.loop["epoch_length"] * self.loop["max_epochs"]
        return self.loop["max_iters"]


@dataclass
class Seen:
    """Every plan a job's ranks received: iteration -> [(rank, values)]."""

    values: dict[int, list[tuple[int, Any]]] = field(default_factory=dict)

    def add(self, rank: int, plan: pb.Plan) -> None:
        for offset, values in enumerate(decode(plan)):
            self.values.setdefault(plan.start_iteration + offset, []).append((rank, values))


JOB_ZERO = JobCase("zero", *JOBS[0], None)


def job_cases() -> list[JobCase]:
    cases = []
    for n in range(NUM_JOBS):
        kind = n % len(JOBS)
        cfg, groups, loop = JOBS[kind]
        if n >= len(JOBS):  # the second copy of each kind runs a different loop length
            loop = {**loop, "epoch_length": loop["epoch_length"] + 1}
        cases.append(JobCase(f"load-{n:02d}", cfg, groups, loop, PLATEAU_MONITOR.get(kind)))
    return cases


def metrics_for(case: JobCase, epoch: int, rank: int) -> dict[str, float]:
    """A rank's validation result. Ranks disagree: on even ranks the loss improves now and
    then, on odd ranks it is flat (a plateau every epoch), so which rank's metrics are
    recorded first changes the curve; every rank must follow the recorded ones."""
    loss = [3.0, 2.0, 2.0, 2.5, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5][epoch % 10] if rank % 2 == 0 else 1.0
    loss += 0.001 * rank
    if case.monitor == "acc":
        return {"acc": 1.0 / loss}
    return {"loss": loss}


async def run_rank(case: JobCase, rank: int, target: str, seen: Seen, errors: list[str],
                   stop_at: float) -> bool:
    """One rank from attach to the end of training; True when it got there."""
    rng = random.Random(f"{case.job_id}/{rank}")
    stride = rng.choice([1, 2, 3, 5, 8])
    plan_size = rng.choice([1, 3, 8, 16, 64])
    length = case.loop["epoch_length"]
    async with grpc.aio.insecure_channel(
            target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        try:
            attached = await stub.AttachJob(pb.AttachJobRequest(
                job_id=case.job_id, spec=case.spec(),
                world_size=RANKS_PER_JOB, rank=rank, plan_size=plan_size))
        except grpc.aio.AioRpcError as exc:
            errors.append(f"{case.job_id} rank {rank} attach: {exc.code()} {exc.details()}")
            return False
        generation = attached.job.generation
        seen.add(rank, attached.plan)
        plan_stop = attached.plan.start_iteration + attached.plan.num_iterations
        done, last = 0, 0
        while time.monotonic() < stop_at:
            # The training loop runs on while the plan lasts; it reports every `stride`
            # iterations and at every epoch end, where a plan waiting for a decision stops.
            target_it = min(done + stride, plan_stop, case.max_iters)
            if case.epoch_based:
                target_it = min(target_it, (done // length + 1) * length)
            if target_it <= done and done < case.max_iters:
                target_it = done  # the plan ran out: ask again for the same iteration
            request = pb.ReportProgressRequest(job_id=case.job_id, generation=generation,
                                               rank=rank, iteration=target_it,
                                               plan_size=plan_size)
            if case.epoch_based and target_it and target_it % length == 0 and target_it > last:
                epoch = target_it // length - 1
                request.epoch_end = epoch
                request.has_metrics = True
                request.metrics.update(metrics_for(case, epoch, rank))
            try:
                reply = await stub.ReportProgress(request)
                if rng.random() < 0.1:  # a retry of the same report: must change nothing
                    again = await stub.ReportProgress(request)
                    seen.add(rank, again.plan)
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{case.job_id} rank {rank} report {target_it}: "
                              f"{exc.code()} {exc.details()}")
                return False
            seen.add(rank, reply.plan)
            done, last = target_it, max(last, target_it)
            plan_stop = reply.plan.start_iteration + reply.plan.num_iterations
            if plan_stop > case.max_iters:
                return True
            if reply.plan.num_iterations == 0:
                await asyncio.sleep(0.005)  # waiting for another rank's decision
    return False


async def run_load(targets: list[str], cases: list[JobCase]) -> tuple[dict[str, Seen],
                                                                      list[str], int]:
    seen = {case.job_id: Seen() for case in cases}
    errors: list[str] = []
    stop_at = time.monotonic() + DEADLINE_SECONDS
    tasks = []
    for j, case in enumerate(cases):
        for rank in range(RANKS_PER_JOB):
            target = targets[(j * RANKS_PER_JOB + rank) % len(targets)]
            tasks.append(run_rank(case, rank, target, seen[case.job_id], errors, stop_at))
    finished = await asyncio.gather(*tasks)
    return seen, errors, sum(finished)


@pytest.fixture
def two_servers(redis_url: str) -> Iterator[list[ServerProcess]]:
    servers: list[ServerProcess] = []
    try:
        for _ in range(2):
            servers.append(ServerProcess(redis_url=redis_url).start())
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_256_ranks_over_16_jobs_on_two_servers_see_identical_engine_values(
    two_servers: list[ServerProcess],
):
    cases = job_cases()
    seen, errors, finished = asyncio.run(run_load([s.target for s in two_servers], cases))
    assert not errors, errors[:10]
    assert finished == NUM_JOBS * RANKS_PER_JOB, "some ranks did not reach the end in time"
    assert all(s.proc is not None and s.proc.poll() is None for s in two_servers)
    with grpc.insecure_channel(two_servers[0].target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        for case in cases:
            by_iteration = seen[case.job_id].values
            # Identical values on every rank for every iteration any rank received.
            for iteration, received in by_iteration.items():
                first_rank, first = received[0]
                for rank, values in received[1:]:
                    assert values == first, (
                        f"{case.job_id} iteration {iteration}: rank {rank} got {values}, "
                        f"rank {first_rank} got {first}")
            # ... equal to the engine's, given the decisions the job recorded.
            state = payload_of(stub.GetState(pb.GetStateRequest(
                job_id=case.job_id, iteration=case.max_iters)).state_json)
            decisions = {int(e): m for e, m in state["decisions"].items()}
            expected = engine_values(case.cfg, case.groups, decisions, **case.loop)
            assert sorted(by_iteration) == list(range(case.max_iters + 1)), case.job_id
            for iteration, received in by_iteration.items():
                assert received[0][1] == expected[iteration], (case.job_id, iteration)
            job = stub.GetJob(pb.GetJobRequest(job_id=case.job_id)).job
            assert job.generation == 1 and len(job.progress) == RANKS_PER_JOB


def test_requests_waiting_on_a_stalled_redis_all_succeed_once_it_answers(
    redis_server: RedisServer, redis_url: str,
):
    """150 requests in flight on ONE server while Redis stalls for a second (a fsync, a
    slow script, a failover): they wait for it, within the store's socket timeout, and
    all succeed. No request may fail because the server ran out of connections."""
    server = InProcessServer(redis_url=redis_url).start()

    async def burst() -> list[BaseException | pb.GetJobResponse]:
        channels = [grpc.aio.insecure_channel(
            server.target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(8)]
        try:
            stubs = [pb_grpc.SchedulerServiceStub(c) for c in channels]
            await stubs[0].AttachJob(pb.AttachJobRequest(job_id="stall", spec=JOB_ZERO.spec()))
            redis_server.pause()
            try:
                calls = [asyncio.ensure_future(stubs[i % 8].GetJob(
                    pb.GetJobRequest(job_id="stall"), timeout=20)) for i in range(150)]
                await asyncio.sleep(1.0)
            finally:
                redis_server.resume()
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await asyncio.gather(*(c.close() for c in channels))

    try:
        replies = asyncio.run(burst())
    finally:
        server.stop()
    failed = [r for r in replies if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} of 150 failed, e.g. {failed[0]!r}"
