"""Report-RPC latency and throughput, next to a bare grpc.aio echo server.

Both servers run as separate processes on loopback and are driven by the same load
generator (grpc.aio, ``--concurrency`` requests in flight, ``--seconds`` each):

* echo: a bare grpc.aio server whose one unary method returns its request bytes;
  the request is a serialized ReportProgressRequest, so both see the same payload.
* paramsched: ``paramsched serve`` on the embedded store, and on Redis (a
  redis-server started here), ranks reporting consecutive iterations of one job.
* the same on a Redis master with one replica, ``--redis-wait-replicas 0`` and then
  ``1`` (``WAIT 1`` pipelined after every report script that hands out a plan), in the
  same run: the difference is what waiting for the replica costs a report.

The ratio paramsched/echo is the figure to watch (issue target: >= 0.6 of echo
throughput). This machine's speed drifts by tens of percent between runs, so echo and
both stores run ``--rounds`` times, one after the other, and each round's ratio is
taken against its own echo. Usage:

    .venv/bin/python benchmarks/bench_report_rpc.py [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import redis as redis_py

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc

from process_harness import ServerProcess
from redis_harness import RedisServer

ECHO_SERVER = """
import asyncio, sys, grpc
async def main():
    server = grpc.aio.server()
    async def echo(request, context):
        return request
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""

CONFIG = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, end=500),
    dict(type="CosineAnnealingLR", by_epoch=True, T_max=100, convert_to_iter_based=True),
    dict(type="CosineAnnealingMomentum", by_epoch=True, T_max=100, eta_min=0.85,
         convert_to_iter_based=True),
]


def job_spec() -> pb.JobSpec:
    spec = pb.JobSpec(param_scheduler_json=json.dumps(CONFIG), epoch_length=1000, max_epochs=100)
    for lr in (0.1, 0.01):
        spec.initial_values.add().values.update({"lr": lr, "momentum": 0.9})
    return spec


async def drive(call, make_request, seconds: float, concurrency: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker(worker_id: int) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            request = make_request(worker_id, n)
            start = time.perf_counter()
            await call(request)
            latencies.append(time.perf_counter() - start)
            n += 1

    begin = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - begin
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
    }


async def bench_echo(seconds: float, concurrency: int, payload: bytes) -> dict[str, float]:
    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary("/bench.Echo/Echo")
            await echo(payload)  # warm up the connection
            return await drive(echo, lambda w, n: payload, seconds, concurrency)
    finally:
        proc.kill()
        proc.wait()


async def bench_paramsched(target: str, seconds: float, concurrency: int,
                           plan_size: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        await stub.AttachJob(pb.AttachJobRequest(job_id="bench", spec=job_spec(),
                                                 world_size=concurrency))

        def request(worker: int, n: int) -> pb.ReportProgressRequest:
            return pb.ReportProgressRequest(job_id="bench", generation=1, rank=worker,
                                            iteration=n % 100_000, plan_size=plan_size)

        for w in range(concurrency):  # warm the timeline cache over the whole range
            await stub.ReportProgress(request(w, 0))
        return await drive(stub.ReportProgress, request, seconds, concurrency)


def measured(server: ServerProcess, args: argparse.Namespace) -> dict[str, float]:
    """``bench_paramsched`` against ``server``, started for it and stopped after."""
    server.start()
    try:
        return asyncio.run(bench_paramsched(server.target, args.seconds, args.concurrency,
                                            args.plan_size))
    finally:
        server.stop()


def row(name: str, result: dict[str, float], echo: dict[str, float]) -> str:
    ratio = result.get("ratio", result["rps"] / echo["rps"])
    return (f"| {name} | {result['rps']:.0f} | {result['p50_ms']:.2f} | {result['p99_ms']:.2f} "
            f"| {ratio:.2f} |")


def medians(results: list[dict[str, float]], echoes: list[dict[str, float]]) -> dict[str, float]:
    """Per-figure medians over the rounds; ``ratio`` is the median of each round's
    ratio to the echo of the same round (the machine's speed drifts between rounds)."""
    merged = {key: statistics.median(r[key] for r in results) for key in results[0]}
    merged["ratio"] = statistics.median(r["rps"] / e["rps"]
                                        for r, e in zip(results, echoes, strict=True))
    return merged


def replicated_rows(tmp: Path, args: argparse.Namespace,
                    echo: dict[str, float]) -> list[str]:
    """A master + replica (AOF everysec on both), without and with ``WAIT 1``."""
    master = RedisServer(data_dir=tmp / "master", extra_args=["--appendfsync", "everysec"])
    replica = RedisServer(data_dir=tmp / "replica", extra_args=[
        "--appendfsync", "everysec", "--replicaof", "127.0.0.1", str(master.port)])
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while replica_info(replica).get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync with the master")
            time.sleep(0.1)
        for wait in (0, 1):
            with redis_py.Redis.from_url(master.url) as client:
                client.flushall()  # a fresh job each time
            result = measured(ServerProcess(redis_url=master.url,
                                            args=["--redis-wait-replicas", str(wait)]), args)
            lines.append(row(f"paramsched, Redis master + replica, --redis-wait-replicas "
                             f"{wait}", result, echo))
    finally:
        replica.stop()
        master.stop()
    return lines


def replica_info(server: RedisServer) -> dict[str, object]:
    with redis_py.Redis.from_url(server.url, decode_responses=True) as client:
        return dict(client.info("replication"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--plan-size", type=int, default=16,
                        help="iterations of plan per reply (clients refill rarely; 16 is a "
                             "typical steady-state refill)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of echo, embedded and Redis (medians are reported)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sample = pb.ReportProgressRequest(job_id="bench", generation=1, rank=3, iteration=12345,
                                      plan_size=args.plan_size).SerializeToString()
    echoes: list[dict[str, float]] = []
    embedded: list[dict[str, float]] = []
    on_redis: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(data_dir=Path(tmp) / "redis", extra_args=["--appendfsync",
                                                                      "everysec"])
        try:
            for round_ in range(args.rounds):  # echo and both stores, side by side
                echoes.append(asyncio.run(bench_echo(args.seconds, args.concurrency, sample)))
                embedded.append(measured(ServerProcess(data_dir=Path(tmp) / f"data-{round_}"),
                                         args))
                with redis_py.Redis.from_url(redis.url) as client:
                    client.flushall()  # a fresh job each round
                on_redis.append(measured(ServerProcess(redis_url=redis.url), args))
        finally:
            redis.stop()
        echo = {key: statistics.median(e[key] for e in echoes) for key in echoes[0]}
        lines = [
            f"Report RPC, {args.concurrency} in flight, {args.seconds:.0f} s each, plan of "
            f"{args.plan_size} iterations x 2 groups x 2 params per reply; {args.rounds} "
            "rounds of echo, embedded and Redis one after the other: medians, and the "
            "median of each round's ratio to its own echo.",
            "",
            "| server | req/s | p50 ms | p99 ms | throughput vs echo |",
            "|---|---:|---:|---:|---:|",
            row("bare grpc.aio echo (baseline)", echo, echo),
            row("paramsched, embedded store", medians(embedded, echoes), echo),
            row("paramsched, Redis store (AOF everysec)", medians(on_redis, echoes), echo),
        ]
        lines += replicated_rows(Path(tmp), args, echo)
    lines += [
        "",
        "The master + replica rows run once, after the rounds, against the median echo. "
        "WAIT: every report here hands out a plan, so with --redis-wait-replicas 1 each one "
        "waits for the replica's acknowledgement (one replication round trip, pipelined in "
        "the same Redis round trip as the script); the last two rows, measured in one run, "
        "differ by that alone. On loopback it is within the noise of a shared machine; "
        "across zones add the replica's network round trip to p50.",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
