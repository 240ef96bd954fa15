"""Cold refills: what a server that never saw a job pays to answer it, against a warm one.

A refill is a rank's ``ReportProgress`` that returns its next plan (256 iterations
from the report), sent as a rank sends it: with the end of the plan it holds and
``skip_held``, so the reply holds the iterations the rank does not have yet.
A server is *warm* for a job when it computed the job's last plan itself; it is *cold*
after a restart, on another replica, after ``LoadState`` into an empty store, or when
its job cache evicted the job. Without durable keyframes a cold refill at iteration t
replays from iteration 0 (seconds at t = 10^6); with them it continues from the job's
stored keyframe, so the goal is cold <= 2x warm at every t, whatever the number of jobs.

Sections (each figure a median, ratios against a baseline of the same run):

1. Cold vs warm at t = 10^3 .. 10^max_exp: a checkpoint at t is loaded into an empty
   embedded store (``LoadState``, timed against the same at t = 10^3); the loading
   server then answers reports (warm); a fresh server on the same store (a restart)
   answers the next report (cold).
2. Round robin over N active jobs (10 .. 10,000) at t = 3*10^4, with the default job
   cache (256 jobs): every report past 256 jobs is a cache miss. Baseline: 10 jobs.
3. Three replicas on one Redis, a job's ranks round-robin over them: the first refill on
   each replica against the warm ones.

The service runs in this process (no gRPC: ``bench_report_rpc.py`` measures that), so
the figures are the service's and the store's own cost.

    .venv/bin/python benchmarks/bench_cold_refill.py [--max-exp 7] [--jobs 10,100,1000,10000]
        [--out FILE.md]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from paramsched.server.service import SchedulerService
from paramsched.server.store import EmbeddedJobStore, JobNotFound, JobStore, RedisJobStore

from redis_harness import RedisServer

PLAN = 256


def spec(max_iters: int) -> dict[str, Any]:
    """Warm-up, then cosine lr and momentum to the end, two groups."""
    warmup = max(1, max_iters // 100)
    return {
        "param_scheduler": [
            {"type": "LinearLR", "start_factor": 1e-3, "by_epoch": False, "end": warmup},
            {"type": "CosineAnnealingLR", "by_epoch": False, "begin": warmup,
             "eta_min_ratio": 0.01},
            {"type": "CosineAnnealingMomentum", "by_epoch": False, "eta_min": 0.85},
        ],
        "initial_values": [{"lr": 3e-4, "momentum": 0.95}, {"lr": 1e-4, "momentum": 0.9}],
        "max_iters": max_iters,
    }


async def drained(service: SchedulerService) -> None:
    """Wait for the keyframes the service stores in the background."""
    while service._background:
        await asyncio.gather(*service._background)


async def checkpoint_at(t: int, tmp: Path) -> str:
    """A checkpoint state of a job at iteration t (the setup replays once from 0)."""
    # (no cost budget: this setup replays the job from 0 to t once, as no request may)
    service = SchedulerService(EmbeddedJobStore(tmp / f"source-{t}"), max_values_cells=10**12)
    await service.attach("source", spec(max(2 * t, 1000)), world_size=1, run_id="source")
    await service.values("source", t, t + 1)
    state = await service.get_state("source", t)
    await service.store.close()
    return state


def held(iteration: int) -> dict[str, Any]:
    """What a rank sends with a report ``PLAN // 2`` iterations after its last one: the
    end of the plan it holds, and that the reply may leave out what it holds."""
    return {"held_until": iteration - PLAN // 2 + PLAN, "skip_held": True}


async def timed(coro: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await coro
    return time.perf_counter() - start, result


async def cold_vs_warm(t: int, tmp: Path, repeat: int = 5) -> dict[str, float]:
    state = await checkpoint_at(t, tmp)
    loads, warm, cold = [], [], []
    for r in range(repeat):
        store = EmbeddedJobStore(tmp / f"target-{t}-{r}")
        loader = SchedulerService(store)
        seconds, (view, _plan, _resumed) = await timed(loader.load_state(
            "job", state, plan_size=PLAN, world_size=1, run_id="run", fork=True))
        loads.append(seconds)
        generation = view.record.generation
        iteration = t
        for _ in range(3):
            iteration += PLAN // 2
            seconds, _ = await timed(loader.report("job", generation=generation, rank=0,
                                                   iteration=iteration, plan_size=PLAN,
                                                   **held(iteration)))
            warm.append(seconds)
        await drained(loader)
        restarted = SchedulerService(store)
        iteration += PLAN // 2
        seconds, _ = await timed(restarted.report("job", generation=generation, rank=0,
                                                  iteration=iteration, plan_size=PLAN,
                                                  **held(iteration)))
        cold.append(seconds)
        await store.close()
    return {"load": statistics.median(loads), "warm": statistics.median(warm),
            "cold": statistics.median(cold)}


async def round_robin(n: int, state: str, t: int, tmp: Path, rounds: int = 3) -> float:
    """p50 of reports over ``n`` jobs taken in turn (each at its own frontier)."""
    store = EmbeddedJobStore(tmp / f"jobs-{n}")
    service = SchedulerService(store)
    generations = {}
    for i in range(n):
        view, _plan, _ = await service.load_state(f"job-{i}", state, plan_size=PLAN,
                                                  world_size=1, run_id="run", fork=True)
        generations[i] = view.record.generation
    await drained(service)
    times = []
    for r in range(1, rounds + 1):
        for i in range(n):
            seconds, _ = await timed(service.report(
                f"job-{i}", generation=generations[i], rank=0, iteration=t + r * PLAN // 2,
                plan_size=PLAN, **held(t + r * PLAN // 2)))
            times.append(seconds)
        await drained(service)
    await store.close()
    return statistics.median(times)


async def replicas(state: str, t: int, url: str, rounds: int = 20) -> dict[str, float]:
    """Three services on one Redis; reports go round robin over them."""
    stores: list[JobStore] = [RedisJobStore(url) for _ in range(3)]
    for store in stores:  # connections and scripts are a process's start-up, not a refill
        await store.get("warm-up")
        await store.keyframe("warm-up")
        with contextlib.suppress(JobNotFound):  # (reports have a connection of their own)
            await store.report("warm-up", generation=1, rank=0, iteration=0)
    services = [SchedulerService(s) for s in stores]
    view, _plan, _ = await services[0].load_state("job", state, plan_size=PLAN,
                                                  world_size=1, run_id="run", fork=True)
    await drained(services[0])
    generation = view.record.generation
    first, warm = [], []
    seen: set[int] = {0}
    iteration = t
    for r in range(rounds):
        replica = r % 3
        iteration += PLAN // 4
        seconds, _ = await timed(services[replica].report(
            "job", generation=generation, rank=0, iteration=iteration, plan_size=PLAN,
            held_until=iteration - PLAN // 4 + PLAN, skip_held=True))
        (warm if replica in seen else first).append(seconds)
        seen.add(replica)
        await drained(services[replica])
    for s in stores:
        await s.close()
    return {"first": statistics.median(first), "warm": statistics.median(warm)}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def run(args: argparse.Namespace) -> list[str]:
    lines = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        lines += ["### Cold vs warm refill (embedded store)", "",
                  "| t | LoadState into an empty store | vs LoadState at 10^3 | warm report | "
                  "cold report (restart) | cold / warm |", "|---|---|---|---|---|---|"]
        base_load = None
        for exp in range(3, args.max_exp + 1):
            got = await cold_vs_warm(10**exp, tmp)
            base_load = base_load or got["load"]
            lines.append(f"| 10^{exp} | {ms(got['load'])} | {got['load'] / base_load:.2f}x | "
                         f"{ms(got['warm'])} | {ms(got['cold'])} | "
                         f"{got['cold'] / got['warm']:.2f}x |")
        t = 30_000
        state = await checkpoint_at(t, tmp)
        lines += ["", f"### Round-robin refills over N active jobs at t = {t} (job cache: "
                  f"256 jobs)", "", "| jobs | report p50 | vs 10 jobs |", "|---|---|---|"]
        base = None
        for n in args.jobs:
            p50 = await round_robin(n, state, t, tmp)
            base = base or p50
            lines.append(f"| {n} | {ms(p50)} | {p50 / base:.2f}x |")
        redis_server = RedisServer(data_dir=tmp / "redis")
        try:
            got = await replicas(state, t, redis_server.url)
        finally:
            redis_server.stop()
        lines += ["", "### Three replicas on one Redis, reports round robin", "",
                  "| first refill on a replica | warm refill | first / warm |", "|---|---|---|",
                  f"| {ms(got['first'])} | {ms(got['warm'])} | "
                  f"{got['first'] / got['warm']:.2f}x |"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-exp", type=int, default=7)
    parser.add_argument("--jobs", default="10,100,1000,10000")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.jobs = [int(x) for x in args.jobs.split(",")]
    lines = asyncio.run(run(args))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
