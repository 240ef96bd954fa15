"""Isolation: one job's report latency while hostile requests hit the same server.

A ``paramsched serve`` process (embedded store) serves a *victim* job whose rank
reports continuously (one report in flight, 64-iteration plans). Its report latency is
measured alone (the baseline), then while attackers run at the same time:

* far-ahead reports: ``ReportProgress`` at iteration 10^9 - 5 of a 10^9-iteration job
  (8 ranks, each again 0.1 s after its answer, 2 s deadlines; the kind that once
  replayed for minutes);
* huge previews: ``PreviewSchedule`` of 64 groups x 4 params x 10^6 iterations, first
  page only (4 in flight, back to back; the kind that once took 6 GB);
* wide attaches: ``AttachJob`` of a 64-scheduler x 256-group spec with plan_size 4,096
  (one a second, each a new job; one once blocked the server for 2.6 s).

The attack runs in a process of its own (decoding its big replies must not slow the
victim's client); on a 2-core machine the attackers, the server and both clients share
the CPUs, which the figure includes.

The figure to watch is the victim's p50 (and p99) under attack / alone: goal <= 2x.

    .venv/bin/python benchmarks/bench_isolation.py [--seconds 5] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc

from process_harness import ServerProcess


def spec(configs: list[dict[str, Any]], groups: int, params: dict[str, float],
         max_iters: int) -> pb.JobSpec:
    message = pb.JobSpec(param_scheduler_json=json.dumps(configs), max_iters=max_iters)
    for _ in range(groups):
        message.initial_values.add().values.update(params)
    return message


VICTIM = spec([{"type": "LinearLR", "start_factor": 0.1, "by_epoch": False, "end": 100},
               {"type": "CosineAnnealingLR", "by_epoch": False, "begin": 100}],
              2, {"lr": 0.1, "momentum": 0.9}, 10**6)
FAR = spec([{"type": "CosineAnnealingLR", "by_epoch": False}], 2, {"lr": 0.1}, 10**9)
HUGE = spec([{"type": "CosineAnnealingParamScheduler", "param_name": p, "by_epoch": False}
             for p in ("lr", "momentum", "weight_decay", "dampening")],
            64, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "dampening": 0.1}, 10**6)
WIDE = spec([{"type": "ExponentialParamScheduler", "param_name": "lr", "gamma": 0.9999,
              "by_epoch": False}] * 64, 256, {"lr": 0.1}, 10**5)


async def victim_latencies(stub: pb_grpc.SchedulerServiceStub, generation: int,
                           seconds: float, start: int) -> tuple[list[float], int]:
    latencies = []
    iteration = start
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        iteration += 16
        began = time.perf_counter()
        await stub.ReportProgress(pb.ReportProgressRequest(
            job_id="victim", generation=generation, iteration=iteration, plan_size=64))
        latencies.append(time.perf_counter() - began)
    return latencies, iteration


async def attack(stub: pb_grpc.SchedulerServiceStub, stop: asyncio.Event,
                 counts: dict[str, int], kinds: set[str]) -> None:
    async def loop(name: str, call: Any, pause: float = 0.0) -> None:
        while not stop.is_set():
            await asyncio.sleep(pause)
            try:
                await call()
            except grpc.aio.AioRpcError as exc:
                counts[f"{name} {exc.code().name}"] = counts.get(f"{name} {exc.code().name}",
                                                                 0) + 1
            else:
                counts[f"{name} OK"] = counts.get(f"{name} OK", 0) + 1

    far_gen = (await stub.AttachJob(pb.AttachJobRequest(job_id="far", spec=FAR))).job.generation

    def far() -> Any:
        return stub.ReportProgress(pb.ReportProgressRequest(
            job_id="far", generation=far_gen, iteration=10**9 - 5), timeout=2.0)

    def huge() -> Any:
        return stub.PreviewSchedule(pb.PreviewScheduleRequest(
            spec=HUGE, start_iteration=0, stop_iteration=10**6), timeout=10.0)

    wide_n = 0

    def wide() -> Any:
        nonlocal wide_n
        wide_n += 1
        return stub.AttachJob(pb.AttachJobRequest(job_id=f"wide-{wide_n}", spec=WIDE,
                                                  plan_size=4096), timeout=10.0)

    await asyncio.gather(
        *[loop("far-ahead report", far, 0.1) for _ in range(8 * ("far" in kinds))],
        *[loop("huge preview", huge) for _ in range(4 * ("huge" in kinds))],
        *[loop("wide attach", wide, 1.0) for _ in range(1 * ("wide" in kinds))])


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"p50": statistics.median(ordered),
            "p99": ordered[max(0, int(len(ordered) * 0.99) - 1)], "n": len(ordered)}


async def attacker(target: str, seconds: float, kinds: set[str]) -> dict[str, int]:
    """The attack, for ``seconds`` (run in its own process: decoding its big replies must
    not slow the victim's client)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        stop = asyncio.Event()
        counts: dict[str, int] = {}
        task = asyncio.create_task(attack(stub, stop, counts, kinds))
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.wait_for(task, timeout=60)
    return counts


def attacker_process(target: str, seconds: float, kinds: set[str],
                     out: Any) -> None:
    out.put(asyncio.run(attacker(target, seconds, kinds)))


async def run(target: str, seconds: float, kinds: set[str]) -> tuple[
        dict[str, float], dict[str, float], dict[str, int]]:
    import multiprocessing

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        reply = await stub.AttachJob(pb.AttachJobRequest(job_id="victim", spec=VICTIM))
        generation = reply.job.generation
        await victim_latencies(stub, generation, 1.0, 0)  # warm up
        alone, iteration = await victim_latencies(stub, generation, seconds, 0)
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        process = context.Process(target=attacker_process,
                                  args=(target, seconds + 3.0, kinds, results))
        process.start()
        await asyncio.sleep(2.0)  # the attack reaches full strength
        attacked, _ = await victim_latencies(stub, generation, seconds, iteration)
        counts = await asyncio.to_thread(results.get, True, 120)
        process.join(30)
    return summary(alone), summary(attacked), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--attack", default="far,huge,wide",
                        help="which attackers run: far, huge, wide (comma-separated)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(
            data_dir=Path(tmp) / "data").start() as server:
        alone, attacked, counts = asyncio.run(run(server.target, args.seconds,
                                                 set(args.attack.split(","))))
    lines = [
        f"Victim: one rank reporting (64-iteration plans), {args.seconds:g} s alone, then "
        f"{args.seconds:g} s under attack, embedded store.", "",
        "| victim report | p50 ms | p99 ms | reports |", "|---|---:|---:|---:|",
        f"| alone (baseline) | {alone['p50'] * 1e3:.2f} | {alone['p99'] * 1e3:.2f} | "
        f"{alone['n']:.0f} |",
        f"| under attack | {attacked['p50'] * 1e3:.2f} | {attacked['p99'] * 1e3:.2f} | "
        f"{attacked['n']:.0f} |",
        f"| **ratio** | **{attacked['p50'] / alone['p50']:.2f}x** | "
        f"{attacked['p99'] / alone['p99']:.2f}x | |", "",
        "Attack requests answered (code: count): " + ", ".join(
            f"{k}: {v}" for k, v in sorted(counts.items())) + ".",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
