"""The report RPC's fast path in the gRPC layer: the plan conversion hands out exactly
the bytes the plain per-value conversion did, and the one-coroutine interceptor counts
every RPC as the layered one did (method, status code, latency)."""

from __future__ import annotations

import json
import math
import random
import time

import grpc
import pytest

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.server.grpc.servicer import flat_values, plan_to_proto
from paramsched.server.service import Plan

from grpc_harness import serving

TRICKY = [0.1 + 0.2, 1e-300, 5e-324, 1 / 3, 1.7976931348623157e308, -0.0, 2.0**53 + 2,
          math.inf, -math.inf]


def reference(plan: Plan) -> pb.Plan:
    """The conversion as it was: one Python step per value."""
    message = pb.Plan(
        start_iteration=plan.start, num_iterations=len(plan.values), params=plan.params,
        num_groups=plan.num_groups,
        values=[group[p] for step in plan.values for group in step for p in plan.params],
        generation=plan.generation, max_iters=plan.max_iters, incarnation=plan.incarnation,
        horizon_token=plan.horizon_token)
    if plan.waits_for_epoch is not None:
        message.waits_for_epoch = plan.waits_for_epoch
    return message


def random_plan(rng: random.Random, params: int, groups: int, steps: int) -> Plan:
    names = tuple(rng.sample(["lr", "momentum", "weight_decay", "eps", "beta1"], params))
    stored = list(names)
    rng.shuffle(stored)  # the dicts' own order need not be the plan's
    values = [[{p: rng.choice([*TRICKY, rng.random()]) for p in stored}
               for _ in range(groups)] for _ in range(steps)]
    return Plan(start=rng.randrange(10**7), params=names, num_groups=groups, values=values,
                generation=rng.randrange(1, 9),
                waits_for_epoch=rng.choice([None, 0, rng.randrange(100)]),
                max_iters=rng.randrange(10**8), incarnation=rng.choice(["", "abc"]),
                horizon_token=rng.choice(["", "k1.0123abcd"]))


@pytest.mark.parametrize("params", [0, 1, 2, 3, 5])
def test_plan_conversion_is_byte_identical_to_the_per_value_one(params: int) -> None:
    rng = random.Random(params)
    for _ in range(50):
        plan = random_plan(rng, params, rng.randrange(1, 5), rng.randrange(0, 20))
        expected = reference(plan).SerializeToString(deterministic=True)
        assert plan_to_proto(plan).SerializeToString(deterministic=True) == expected
        # Into a reply's own field, as ReportProgress does: the same bytes again.
        reply = pb.ReportProgressResponse()
        plan_to_proto(plan, reply.plan)
        assert reply.SerializeToString(deterministic=True) == pb.ReportProgressResponse(
            plan=reference(plan)).SerializeToString(deterministic=True)


def test_flat_values_keep_every_bit() -> None:
    plan = Plan(start=0, params=("lr", "momentum"), num_groups=2, generation=1,
                values=[[{"momentum": a, "lr": b}, {"lr": b, "momentum": a}]
                        for a, b in zip(TRICKY, reversed(TRICKY), strict=True)])
    flat = flat_values(plan)
    expected = [v for a, b in zip(TRICKY, reversed(TRICKY), strict=True) for v in (b, a, b, a)]
    assert [x.hex() for x in flat] == [x.hex() for x in expected]


CONFIG = [dict(type="LinearLR", start_factor=0.001, by_epoch=False, end=50),
          dict(type="CosineAnnealingLR", by_epoch=False, T_max=1000)]


def _spec() -> pb.JobSpec:
    spec = pb.JobSpec(param_scheduler_json=json.dumps(CONFIG), max_iters=1000)
    for lr in (0.1, 0.01):
        spec.initial_values.add().values.update({"lr": lr, "momentum": 0.9})
    return spec


def _sample(server: object, name: str, **labels: str) -> float:
    registry = server.parts.metrics.registry  # type: ignore[attr-defined]
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _settled(server: object, name: str, expected: float, **labels: str) -> float:
    """The sample once it reaches ``expected`` (or after 10 s): a refused call is
    counted as its handler unwinds, a moment after the client saw the status."""
    deadline = time.monotonic() + 10
    while (value := _sample(server, name, **labels)) != expected and \
            time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def test_reports_are_counted_per_method_and_code_and_timed() -> None:
    with serving(plan_size=16) as (server, stub):
        stub.AttachJob(pb.AttachJobRequest(job_id="fast", spec=_spec(), world_size=2))
        plans = [stub.ReportProgress(pb.ReportProgressRequest(
            job_id="fast", generation=1, rank=rank, iteration=i, plan_size=8)).plan
            for i in range(5) for rank in range(2)]
        with pytest.raises(grpc.RpcError) as refused:
            stub.ReportProgress(pb.ReportProgressRequest(job_id="fast", generation=0))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as fenced:
            stub.ReportProgress(pb.ReportProgressRequest(job_id="fast", generation=2))
        assert fenced.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # Values of a report's plan equal GetValues' of the same iterations.
        page = stub.GetValues(pb.GetValuesRequest(job_id="fast", start_iteration=4,
                                                  stop_iteration=12)).plan
        assert list(plans[-1].values) == list(page.values)
        assert plans[-1].start_iteration == 4 and plans[-1].num_iterations == 8

        expected = {"OK": 10, "INVALID_ARGUMENT": 1, "FAILED_PRECONDITION": 1}
        counted = {code: _settled(server, "paramsched_rpcs_total", n,
                                  method="ReportProgress", code=code)
                   for code, n in expected.items()}
        assert counted == expected
        assert _sample(server, "paramsched_rpcs_total", method="AttachJob", code="OK") == 1
        assert _settled(server, "paramsched_rpc_duration_seconds_count", 12,
                        method="ReportProgress") == 12
        assert _sample(server, "paramsched_store_duration_seconds_count",
                       operation="report") >= 10


def test_a_request_too_big_is_refused_and_counted_before_it_is_parsed() -> None:
    with serving(plan_size=16, max_message_bytes=1024) as (server, stub):
        with pytest.raises(grpc.RpcError) as refused:
            stub.ReportProgress(pb.ReportProgressRequest(job_id="x" * 2000, generation=1))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_message_bytes=1024" in (refused.value.details() or "")
        assert _settled(server, "paramsched_rpcs_total", 1, method="ReportProgress",
                        code="INVALID_ARGUMENT") == 1
