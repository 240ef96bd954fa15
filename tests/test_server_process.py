"""``paramsched serve`` as a process: shutdown, crashes, restarts, replicas on one Redis."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc

from process_harness import PARAMSCHED, ServerProcess
from redis_harness import RedisServer
from test_service_grpc import (
    PLATEAU,
    WARMUP_COSINE,
    decode,
    engine_values,
    payload_of,
    spec_proto,
)


def stub_for(server: ServerProcess) -> tuple[grpc.Channel, pb_grpc.SchedulerServiceStub]:
    channel = grpc.insecure_channel(server.target)
    return channel, pb_grpc.SchedulerServiceStub(channel)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sigterm_finishes_in_flight_requests_then_exits_zero(tmp_path: Path):
    server = ServerProcess(data_dir=tmp_path).start()
    try:
        channel, stub = stub_for(server)
        long_cfg = [dict(type="CosineAnnealingLR", by_epoch=False, T_max=1000)]
        spec = spec_proto(long_cfg, [{"lr": 0.1}], max_epochs=None, max_iters=900_000)
        with pytest.raises(grpc.RpcError):  # connect first, so the request below goes out
            stub.GetJob(pb.GetJobRequest(job_id="absent"))
        assert server.proc is not None
        busy_before = cpu_seconds(server.proc.pid)
        # A resume deep into a long job from a state without its keyframe (as an older
        # server wrote them): a replay from 0 in the server's worker thread.
        stub.AttachJob(pb.AttachJobRequest(job_id="long", spec=spec))
        state = payload_of(stub.GetState(pb.GetStateRequest(job_id="long",
                                                            iteration=0)).state_json)
        state.update(iteration=400_000)
        state.pop("keyframe", None)
        unsigned = json.dumps({"format": "paramsched.schedule/v2",
                               "payload": json.dumps(state), "key_id": "", "signature": ""})
        busy_before = cpu_seconds(server.proc.pid)
        in_flight = stub.LoadState.future(pb.LoadStateRequest(
            job_id="long", state_json=unsigned, run_id="r2", plan_size=11))
        # Once the server has burnt some CPU the request is surely in flight (a fixed
        # sleep would race on a loaded machine).
        deadline = time.monotonic() + 60
        while cpu_seconds(server.proc.pid) - busy_before < 0.25:
            assert time.monotonic() < deadline and not in_flight.done()
            time.sleep(0.02)
        assert server.terminate() == 0
        reply = in_flight.result(timeout=30)
        assert reply.plan.start_iteration == 400_000 and reply.plan.num_iterations == 11
        assert any("stopped" in line for line in server.log)
        channel.close()
    finally:
        server.stop()


def test_kill_9_and_restart_on_the_same_store_continues_the_curve(tmp_path: Path):
    server = ServerProcess(data_dir=tmp_path).start()
    try:
        channel, stub = stub_for(server)
        stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec_proto(PLATEAU)))
        stub.ReportProgress(pb.ReportProgressRequest(
            job_id="j", generation=1, iteration=5, epoch_end=0, has_metrics=True,
            metrics={"loss": 3.0}))
        channel.close()
        server.kill()
        server = ServerProcess(data_dir=tmp_path).start()
        channel, stub = stub_for(server)
        reply = stub.ReportProgress(pb.ReportProgressRequest(
            job_id="j", generation=1, iteration=10, epoch_end=1, has_metrics=True,
            metrics={"loss": 3.0}))
        expected = engine_values(PLATEAU, decisions={0: {"loss": 3.0}, 1: {"loss": 3.0}})
        assert decode(reply.plan) == expected[10:15]
        job = stub.GetJob(pb.GetJobRequest(job_id="j")).job
        assert [(p.rank, p.iteration) for p in job.progress] == [(0, 10)]
        channel.close()
    finally:
        server.stop()


def test_configured_by_environment_like_the_container(tmp_path: Path):
    server = ServerProcess(env={"PARAMSCHED_DATA_DIR": str(tmp_path / "env-data"),
                                "PARAMSCHED_PLAN_SIZE": "3"}).start()
    try:
        channel, stub = stub_for(server)
        reply = stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec_proto(WARMUP_COSINE)))
        assert reply.plan.num_iterations == 3
        assert (tmp_path / "env-data" / "paramsched.sqlite3").exists()
        channel.close()
    finally:
        server.stop()


@pytest.fixture
def two_servers(redis_url: str):  # type: ignore[no-untyped-def]
    servers = [ServerProcess(redis_url=redis_url).start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


def test_two_servers_on_one_redis_serve_the_same_jobs(two_servers: list[ServerProcess]):
    channels, stubs = zip(*(stub_for(s) for s in two_servers), strict=True)
    a, b = stubs
    a.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec_proto(PLATEAU), world_size=4))
    for rank in range(4):
        b.AttachJob(pb.AttachJobRequest(job_id="j", rank=rank, world_size=4))
    # Ranks spread over both servers; the decision comes through server b, the
    # plans of every rank agree.
    plans = []
    for rank in range(4):
        stub = stubs[rank % 2]
        plans.append(decode(stub.ReportProgress(pb.ReportProgressRequest(
            job_id="j", generation=1, rank=rank, iteration=5, epoch_end=0, has_metrics=True,
            metrics={"loss": 1.0 + rank})).plan))
    assert all(p == plans[0] for p in plans)
    assert plans[0] == engine_values(PLATEAU, decisions={0: {"loss": 2.0}})[5:10] or \
        plans[0] == engine_values(PLATEAU, decisions={0: {"loss": 1.0}})[5:10]
    progress = a.GetJob(pb.GetJobRequest(job_id="j")).job.progress
    assert sorted((p.rank, p.iteration) for p in progress) == [(r, 5) for r in range(4)]
    # A resume through one server fences reports through the other.
    state = a.GetState(pb.GetStateRequest(job_id="j", iteration=5)).state_json
    assert b.LoadState(pb.LoadStateRequest(job_id="j", state_json=state)).job.generation == 2
    with pytest.raises(grpc.RpcError) as info:
        a.ReportProgress(pb.ReportProgressRequest(job_id="j", generation=1, iteration=6))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for channel in channels:
        channel.close()


def test_redis_restart_with_aof_loses_nothing(tmp_path: Path):
    redis = RedisServer(data_dir=tmp_path / "redis")
    server = ServerProcess(redis_url=redis.url).start()
    try:
        channel, stub = stub_for(server)
        stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec_proto(PLATEAU)))
        stub.ReportProgress(pb.ReportProgressRequest(
            job_id="j", generation=1, rank=1, iteration=5, epoch_end=0, has_metrics=True,
            metrics={"loss": 0.5}))
        redis.stop()
        with pytest.raises(grpc.RpcError) as info:
            stub.GetJob(pb.GetJobRequest(job_id="j"), timeout=20)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        redis.start()
        job = stub.GetJob(pb.GetJobRequest(job_id="j"), timeout=20).job
        assert [(p.rank, p.iteration) for p in job.progress] == [(0, 0), (1, 5)]
        state = payload_of(stub.GetState(pb.GetStateRequest(job_id="j", iteration=5)).state_json)
        assert state["decisions"] == {"0": {"loss": 0.5}}
        channel.close()
    finally:
        server.stop()
        redis.stop()


def test_health_command_for_container_probes(tmp_path: Path):
    server = ServerProcess(data_dir=tmp_path).start()
    try:
        ok = subprocess.run([str(PARAMSCHED), "health", "--target", server.target],
                            capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0 and "SERVING" in ok.stdout
    finally:
        server.stop()
    down = subprocess.run([str(PARAMSCHED), "health", "--target", server.target,
                           "--timeout", "1"], capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr
