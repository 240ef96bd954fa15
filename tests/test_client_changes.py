"""A rank attached before a live change follows it: a change may schedule a param the
job did not schedule at attach, or extend training past the length the rank saw."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import grpc
import torch

from paramsched import Client
from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc

from grpc_harness import InProcessServer
from test_service_grpc import decode

CONFIG = [dict(type="LinearLR", start_factor=0.5, by_epoch=False, end=5),
          dict(type="CosineAnnealingLR", T_max=30, by_epoch=False, begin=5)]


def run(tmp_path: Path, steps: int, change: pb.RescheduleJobRequest,
        at: int) -> tuple[list[tuple[float, float]], pb.RescheduleJobResponse, list[str]]:
    server = InProcessServer(data_dir=tmp_path, plan_size=4).start()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9,
                          weight_decay=1e-4)
    seen: list[tuple[float, float]] = []
    try:
        with grpc.insecure_channel(server.target) as channel, \
                Client(server.target, plan_size=4, max_plan_size=4,
                       prefetch_seconds=0.0) as client, \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stub = pb_grpc.SchedulerServiceStub(channel)
            client.attach(opt, "live", CONFIG, max_iters=30)
            reply = None
            for i in range(steps):
                seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]))
                opt.step()
                if i == at:
                    reply = stub.RescheduleJob(change)
            assert reply is not None
            values = stub.GetValues(pb.GetValuesRequest(job_id="live")).plan
    finally:
        server.stop()
    # Every value the rank used is the job's value for that iteration, after the change.
    expected = [(step[0]["lr"], step[0].get("weight_decay", 1e-4)) for step in decode(values)]
    assert seen == expected[:steps]
    return seen, reply, [str(w.message) for w in caught]


def test_a_change_may_schedule_a_new_param(tmp_path: Path):
    change = pb.RescheduleJobRequest(job_id="live", start_values={"weight_decay": 0.05},
                                     action="set")
    seen, reply, _ = run(tmp_path, 30, change, at=5)
    s = reply.from_iteration
    assert [wd for _, wd in seen] == [1e-4] * s + [0.05] * (30 - s)


def test_a_change_may_extend_training(tmp_path: Path):
    change = pb.RescheduleJobRequest(job_id="live", mode=pb.RescheduleJobRequest.STRETCH,
                                     max_iters=60, action="extend")
    seen, reply, warned = run(tmp_path, 60, change, at=8)
    assert reply.job.max_iters == 60
    assert not any("last values are held" in w for w in warned)  # no "past the end"
    lrs = [lr for lr, _ in seen]
    assert lrs[59] < lrs[30] < lrs[reply.from_iteration]  # the stretched cosine goes on


def test_a_new_param_reaching_a_rank_that_holds_a_plan_is_asked_for_whole(
        tmp_path: Path, monkeypatch: Any):
    """A rank appends skip_held replies to the plan it holds; when a change gives the
    reply another layout (a new param), it asks again for a whole plan, and every value
    it uses is still the job's."""
    from paramsched.client.handle import ScheduleHandle

    sent: list[tuple[int, bool]] = []
    request = ScheduleHandle._request

    def spied(self: Any, iteration: int, plan_size: int | None = None) -> Any:
        message = request(self, iteration, plan_size)
        sent.append((message.iteration, message.skip_held))
        return message

    monkeypatch.setattr(ScheduleHandle, "_request", spied)
    server = InProcessServer(data_dir=tmp_path, plan_size=64).start()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, weight_decay=1e-4)
    seen = []
    try:
        with grpc.insecure_channel(server.target) as channel, \
                Client(server.target, plan_size=64, max_plan_size=64,
                       prefetch_seconds=0.0) as client:
            stub = pb_grpc.SchedulerServiceStub(channel)
            client.attach(opt, "whole", CONFIG, max_iters=200)
            for i in range(200):
                seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]))
                opt.step()
                time.sleep(0.002)  # slow enough that every refill comes before it is needed
                if i == 1:
                    reply = stub.RescheduleJob(pb.RescheduleJobRequest(
                        job_id="whole", start_values={"weight_decay": 0.05}, action="set"))
            values = stub.GetValues(pb.GetValuesRequest(job_id="whole")).plan
    finally:
        server.stop()
    expected = [(step[0]["lr"], step[0].get("weight_decay", 1e-4)) for step in decode(values)]
    assert seen == expected[:200]
    s = reply.from_iteration
    assert [wd for _, wd in seen] == [1e-4] * s + [0.05] * (200 - s)
    assert any(skip for _, skip in sent) and any(not skip for _, skip in sent[1:])
