"""Live changes: the reschedule mechanism, its guardrails and the audit trail."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc
from paramsched.server.schedules import ConfigError, build_job_spec
from paramsched.server.schedules.reschedule import Schedule, build_change

from grpc_harness import serving
from test_service_grpc import decode, spec_proto

COSINE = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=4),
          dict(type="CosineAnnealingLR", T_max=8, by_epoch=True, convert_to_iter_based=True)]
GROUPS = [{"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
          {"lr": 0.02, "momentum": 0.8, "weight_decay": 0.0}]
Req = pb.RescheduleJobRequest


def schedule(cfg: Any = COSINE, **job: Any) -> Schedule:
    job.setdefault("epoch_length", 5)
    job.setdefault("max_epochs", 8)
    return Schedule(build_job_spec(cfg, GROUPS, **job))


def lrs(s: Schedule, group: int = 0, param: str = "lr") -> list[float]:
    return [v[group][param] for v in s.values_range(0, s.max_iters + 1, {})]


def change(s: Schedule, **data: Any) -> None:
    s.add(build_change(s, data, decisions={}))


# -- the mechanism, on the engine ----------------------------------------------------------
def test_replace_starts_from_the_value_in_force_and_counts_from_s():
    base = schedule()
    changed = schedule()
    change(changed, from_iteration=12, param_scheduler=[dict(
        type="PolyParamScheduler", param_name="lr", eta_min=0.001, power=1.0, by_epoch=False,
        end=11)])
    old, new = lrs(base), lrs(changed)
    assert new[:12] == old[:12]
    assert new[12] == old[12]  # step 0 of the change holds the value in force at s
    assert math.isclose(new[22], 0.001) and new[22:] == [new[22]] * len(new[22:])
    assert all(a > b for a, b in itertools.pairwise(new[12:23]))  # linear decay
    for g in (0, 1):  # every group, from its own value
        assert lrs(changed, g)[12] == lrs(base, g)[12]


def test_set_and_hold_per_group_and_param():
    s = schedule()
    change(s, from_iteration=10, start_values={"lr": 0.5}, groups=[1])
    assert lrs(s, 1)[10:] == [0.5] * 31 and lrs(s, 0) == lrs(schedule(), 0)
    assert s.params == ("lr",)
    # weight_decay was never scheduled: a change can still set it (constant before s).
    change(s, from_iteration=15, start_values={"weight_decay": 0.3})
    assert lrs(s, 0, "weight_decay") == [1e-4] * 15 + [0.3] * 26


def test_multiply_keeps_the_curve_shape():
    s = schedule()
    change(s, from_iteration=6, mode="multiply", start_values={"lr": 0.5})
    base = lrs(schedule())
    assert [b * 0.5 for b in base[6:]] == lrs(s)[6:] and lrs(s)[:6] == base[:6]


def test_rewarm_ramps_a_factor_back_to_one():
    s = schedule()
    change(s, from_iteration=20, mode="multiply", param_scheduler=[dict(
        type="LinearParamScheduler", param_name="lr", start_factor=0.25, end_factor=1.0,
        by_epoch=False, end=5)])
    base, new = lrs(schedule()), lrs(s)
    assert new[20] == base[20] * 0.25 and new[24:] == base[24:]
    assert [n / b for n, b in zip(new[20:24], base[20:24], strict=True)] == pytest.approx(
        [0.25, 0.4375, 0.625, 0.8125])


def test_stretch_extends_training_keeping_the_value_at_s_and_the_end():
    s = schedule()
    change(s, from_iteration=20, mode="stretch", max_iters=60)
    base, new = lrs(schedule()), lrs(s)
    assert s.max_iters == 60 and len(new) == 61
    assert new[:21] == base[:21] and new[-1] == base[-1]
    assert sorted(new[20:], reverse=True) == new[20:]  # still monotone: the cosine tail


def test_changes_stack_in_order():
    s = schedule()
    change(s, from_iteration=10, start_values={"lr": 0.05})
    change(s, from_iteration=14, mode="multiply", start_values={"lr": 2.0})
    assert lrs(s)[9:16] == [lrs(schedule())[9], 0.05, 0.05, 0.05, 0.05, 0.1, 0.1]


@pytest.mark.parametrize(("data", "field"), [
    (dict(from_iteration=-1), "change.from_iteration"),
    (dict(from_iteration=10, mode="twist"), "change.mode"),
    (dict(from_iteration=10, start_values={"lr": math.nan}), "change.start_values.lr"),
    (dict(from_iteration=10, start_values={"dampening": 0.1}), "change.start_values.dampening"),
    (dict(from_iteration=10, groups=[2]), "change.groups"),
    (dict(from_iteration=10, params=["nope"]), "change.params"),
    (dict(from_iteration=10, mode="stretch"), "change.max_iters"),
    (dict(from_iteration=10, param_scheduler=[dict(type="ReduceOnPlateauLR")]),
     "change.param_scheduler"),
    (dict(from_iteration=10, param_scheduler=[dict(type="StepLR", step_size=0)]),
     "param_scheduler[0].step_size"),
    (dict(from_iteration=10, surprise=1), "change.surprise"),
])
def test_bad_changes_name_the_field(data: dict[str, Any], field: str):
    with pytest.raises(ConfigError) as info:
        build_change(schedule(), data, decisions={}, where="change")
    assert info.value.field == field


# -- through the service -------------------------------------------------------------------
@pytest.fixture(params=["embedded", "redis"])
def stub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[pb_grpc.SchedulerServiceStub]:
    backend = ({"redis_url": request.getfixturevalue("redis_url")} if request.param == "redis"
               else {"data_dir": tmp_path})
    with serving(plan_size=8, **backend) as (_, stub):
        yield stub


def create(stub: pb_grpc.SchedulerServiceStub, **guards: Any) -> None:
    spec = spec_proto(COSINE, GROUPS, epoch_length=5, max_epochs=8)
    for name, (low, high) in guards.pop("bounds", {}).items():
        spec.bounds[name].min, spec.bounds[name].max = low, high
    if "max_jump_factor" in guards:
        spec.max_jump_factor = guards["max_jump_factor"]
    stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec))


def values(stub: pb_grpc.SchedulerServiceStub) -> list[Any]:
    return decode(stub.GetValues(pb.GetValuesRequest(job_id="j")).plan)


def test_a_change_never_alters_values_already_handed_out(stub: pb_grpc.SchedulerServiceStub):
    create(stub)
    old = values(stub)
    handed = decode(stub.ReportProgress(pb.ReportProgressRequest(
        job_id="j", generation=1, iteration=9, plan_size=8)).plan)  # iterations 9..16
    reply = stub.RescheduleJob(Req(job_id="j", start_values={"lr": 0.5}, action="set"))
    assert reply.applied and reply.from_iteration == 17
    after = values(stub)
    assert after[9:17] == handed == old[9:17] and after[17][0]["lr"] == 0.5
    assert [dict(g.values) for g in reply.entry.before] == [{"lr": old[17][0]["lr"]},
                                                            {"lr": old[17][1]["lr"]}]
    assert [dict(g.values) for g in reply.entry.after] == [{"lr": 0.5}, {"lr": 0.5}]
    assert reply.job.num_changes == 1 and reply.job.issued_until == 17
    # The next report gets the new values from the switch on.
    plan = decode(stub.ReportProgress(pb.ReportProgressRequest(
        job_id="j", generation=1, iteration=17)).plan)
    assert plan[0][0]["lr"] == 0.5


def test_too_early_is_refused_with_the_earliest_iteration(stub: pb_grpc.SchedulerServiceStub):
    create(stub)
    stub.ReportProgress(pb.ReportProgressRequest(job_id="j", generation=1, iteration=3,
                                                 plan_size=10))  # hands out up to 12
    with pytest.raises(grpc.RpcError) as info:
        stub.RescheduleJob(Req(job_id="j", from_iteration=5, start_values={"lr": 0.5}))
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "earliest iteration a change can take effect is 13" in info.value.details()
    assert stub.GetJob(pb.GetJobRequest(job_id="j")).job.num_changes == 0


def test_dry_run_shows_before_and_after_and_changes_nothing(stub: pb_grpc.SchedulerServiceStub):
    create(stub)
    version = stub.GetJob(pb.GetJobRequest(job_id="j")).job.version
    reply = stub.RescheduleJob(Req(
        job_id="j", from_iteration=20, dry_run=True, preview_iterations=5,
        param_scheduler_json=json.dumps([dict(type="CosineAnnealingParamScheduler",
                                              param_name="lr", T_max=5, eta_min=0.0,
                                              by_epoch=False, end=6)])))
    assert not reply.applied and reply.from_iteration == 20
    assert decode(reply.before) == values(stub)[20:25]
    after = decode(reply.after)
    assert after[0][0]["lr"] == decode(reply.before)[0][0]["lr"] and after[4][0]["lr"] < (
        decode(reply.before)[4][0]["lr"])
    job = stub.GetJob(pb.GetJobRequest(job_id="j")).job
    assert job.version == version and job.num_changes == 0
    assert not stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="j")).entries


def test_guardrails_bounds_and_jumps(stub: pb_grpc.SchedulerServiceStub):
    create(stub, bounds={"lr": (0.0, 0.2)}, max_jump_factor=3.0)
    with pytest.raises(grpc.RpcError) as info:
        stub.RescheduleJob(Req(job_id="j", from_iteration=10, start_values={"lr": 0.3}))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bounds.lr" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.RescheduleJob(Req(job_id="j", from_iteration=10, start_values={"lr": 0.001}))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_jump_factor" in info.value.details() and "force" in info.value.details()
    assert stub.GetJob(pb.GetJobRequest(job_id="j")).job.num_changes == 0
    forced = stub.RescheduleJob(Req(job_id="j", from_iteration=10, start_values={"lr": 0.001},
                                    force=True))
    assert forced.applied and values(stub)[10][0]["lr"] == 0.001


def test_extend_training(stub: pb_grpc.SchedulerServiceStub):
    create(stub)
    old = values(stub)
    reply = stub.RescheduleJob(Req(job_id="j", from_iteration=20, mode=Req.STRETCH,
                                   max_iters=80, action="extend"))
    assert reply.job.max_iters == 80
    after = values(stub)
    assert len(after) == 81 and after[:21] == old[:21] and after[80] == old[40]
    stub.ReportProgress(pb.ReportProgressRequest(job_id="j", generation=1, iteration=80))


def test_audit_trail_survives_restart_and_travels_with_the_checkpoint(tmp_path: Path):
    with serving(data_dir=tmp_path / "a", plan_size=8) as (_, stub):
        create(stub)
        stub.RescheduleJob(Req(job_id="j", from_iteration=10, start_values={"lr": 0.05},
                               action="set", reason="loss spike"))
    with serving(data_dir=tmp_path / "a") as (_, stub):  # restarted on the same store
        entries = stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="j")).entries
        assert [(e.action, e.iteration, e.reason) for e in entries] == [
            ("set", 10, "loss spike")]
        assert entries[0].principal == "anonymous"
        assert [dict(g.values) for g in entries[0].after] == [{"lr": 0.05}, {"lr": 0.05}]
        expected = values(stub)
        state = stub.GetState(pb.GetStateRequest(job_id="j", iteration=12)).state_json
        assert json.loads(json.loads(state)["payload"])["audit"][0]["action"] == "set"
    with serving(data_dir=tmp_path / "b") as (_, stub):  # a fresh, empty store
        loaded = stub.LoadState(pb.LoadStateRequest(job_id="j", state_json=state))
        assert loaded.job.num_changes == 1
        assert values(stub) == expected
        entries = stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="j")).entries
        assert [e.action for e in entries] == ["set", "resume"]
        assert stub.DeleteJob(pb.DeleteJobRequest(job_id="j")).deleted
        entries = stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="j")).entries
        assert [e.action for e in entries] == ["set", "resume", "delete"]


def test_history_of_an_id_that_never_had_a_job_is_not_found(stub: pb_grpc.SchedulerServiceStub):
    with pytest.raises(grpc.RpcError) as info:
        stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="never"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    create(stub)
    assert list(stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="j")).entries) == []


def test_listings_and_get_job_agree_on_params_and_length_after_changes(
        stub: pb_grpc.SchedulerServiceStub):
    """A replace change without explicit params schedules what its configs name; a
    listing builds the schedule the same way as GetJob (one builder)."""
    create(stub)
    stub.RescheduleJob(Req(job_id="j", param_scheduler_json=json.dumps(
        [dict(type="CosineAnnealingMomentum", T_max=4, by_epoch=False)])))
    stub.RescheduleJob(Req(job_id="j", mode=Req.STRETCH, max_iters=60))
    got = stub.GetJob(pb.GetJobRequest(job_id="j")).job
    listed = next(j for j in stub.ListJobs(pb.ListJobsRequest()).jobs if j.job_id == "j")
    assert list(got.params) == ["lr", "momentum"] and got.max_iters == 60
    assert list(listed.params) == list(got.params) and listed.max_iters == got.max_iters
