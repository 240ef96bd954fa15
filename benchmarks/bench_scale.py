"""Scale: many simulated ranks over several jobs, two server processes on one Redis.

Setup, all on this machine (loopback): one ``redis-server`` (AOF, ``appendfsync
everysec``) and TWO ``paramsched serve --redis-url`` processes on it. Ranks alternate
between the two servers (rank i of the run talks to server i % 2), each on its own
channel and TCP connection, like separate training processes.

A simulated rank is what a training process's client does in steady state: it
attaches (``AttachJob`` with the job's spec), then reports consecutive iterations,
every ``--report-every`` iterations (128), each time asking for a plan of
``--plan-size`` iterations (256): the client library's default pattern (a 256-iteration
plan, refilled when half of it is used). Ranks run closed-loop: the simulated training
iterations take no time, so each rank reports again as soon as its previous report is
answered. That is the most pressure a given number of ranks can put on the servers;
throughput is then the servers' capacity and latency includes queueing. With
``--iteration-ms`` > 0 each rank instead waits ``report_every * iteration_ms`` between
reports (a paced, realistic load).

Measured per cell (ranks x jobs), over ``--seconds`` after a warm-up report per rank:
p50/p99 latency per report, reports/s, and CPU seconds per report of the two server
processes together (utime+stime from /proc/<pid>/stat before and after) and of
Redis. Ratios are against the single-rank cell (1 rank, 1 job) measured in the same
run. All load comes from ONE client process (asyncio, grpc.aio); the client, both
servers and Redis share this machine's cores, so absolute throughput is bounded by
the machine, and CPU per report is the figure that carries over to other machines.

    .venv/bin/python benchmarks/bench_scale.py [--seconds 5] [--out FILE.md]
        [--grid 1x1,16x1,16x4,...]   # ranks x jobs cells (default: the full grid)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc

from process_harness import ServerProcess
from redis_harness import RedisServer

# The full grid of the issue: 1, 16, 64, 256 ranks across 1, 4, 16 jobs (a cell needs
# at least one rank per job, so 1 rank runs on 1 job only).
FULL_GRID = [(1, 1), (16, 1), (16, 4), (16, 16), (64, 1), (64, 4), (64, 16),
             (256, 1), (256, 4), (256, 16)]

# A typical job: iteration warm-up, cosine over 1000 epochs of 1000 iterations for lr,
# cosine momentum; two param groups (1,000,000 iterations, so ranks never run out).
CONFIG = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, end=500),
    dict(type="CosineAnnealingLR", by_epoch=True, T_max=1000, convert_to_iter_based=True),
    dict(type="CosineAnnealingMomentum", by_epoch=True, T_max=1000, eta_min=0.85,
         convert_to_iter_based=True),
]
EPOCH_LENGTH = 1000
MAX_EPOCHS = 1000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def job_spec() -> pb.JobSpec:
    spec = pb.JobSpec(param_scheduler_json=json.dumps(CONFIG), epoch_length=EPOCH_LENGTH,
                      max_epochs=MAX_EPOCHS)
    for lr in (0.1, 0.01):
        spec.initial_values.add().values.update({"lr": lr, "momentum": 0.9})
    return spec


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/<pid>/stat fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Cell:
    ranks: int
    jobs: int
    reports: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server_cpu_s: float
    redis_cpu_s: float
    errors: int

    @property
    def rps(self) -> float:
        return self.reports / self.seconds

    @property
    def server_cpu_ms(self) -> float:
        return self.server_cpu_s / max(self.reports, 1) * 1e3

    @property
    def redis_cpu_ms(self) -> float:
        return self.redis_cpu_s / max(self.reports, 1) * 1e3


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


class Rank:
    """One simulated training process: its own channel to one server."""

    def __init__(self, target: str, job_id: str, rank: int, world_size: int,
                 plan_size: int) -> None:
        # A local subchannel pool: a connection of its own, as a separate process has.
        self.channel = grpc.aio.insecure_channel(
            target, options=[("grpc.use_local_subchannel_pool", 1)])
        self.stub = pb_grpc.SchedulerServiceStub(self.channel)
        self.job_id, self.rank, self.world_size = job_id, rank, world_size
        self.plan_size = plan_size
        self.generation = 0
        self.iteration = 0
        self.held_until = 0  # the end of the plan this rank holds

    def hold(self, plan: pb.Plan) -> None:
        end = plan.start_iteration + plan.num_iterations
        if plan.start_iteration <= self.held_until or plan.start_iteration <= self.iteration:
            self.held_until = max(end, self.held_until)

    async def attach(self) -> None:
        reply = await self.stub.AttachJob(pb.AttachJobRequest(
            job_id=self.job_id, spec=job_spec(), world_size=self.world_size, rank=self.rank,
            plan_size=self.plan_size))
        self.generation = reply.job.generation
        self.hold(reply.plan)

    async def report(self) -> pb.ReportProgressResponse:
        """A report as the client sends it: with the end of the plan held and
        ``skip_held``, so the reply holds only what the rank does not have."""
        if self.held_until <= self.iteration or self.held_until > self.iteration + 4096:
            self.held_until = 0  # the iteration wrapped around: it holds nothing here
        reply: pb.ReportProgressResponse = await self.stub.ReportProgress(
            pb.ReportProgressRequest(job_id=self.job_id, generation=self.generation,
                                     rank=self.rank, iteration=self.iteration,
                                     plan_size=self.plan_size, held_until=self.held_until,
                                     skip_held=True))
        self.hold(reply.plan)
        return reply

    async def close(self) -> None:
        await self.channel.close()


async def run_cell(targets: list[str], ranks: int, jobs: int, *, seconds: float,
                   plan_size: int, report_every: int, iteration_ms: float,
                   server_pids: list[int], redis_pid: int, tag: str) -> Cell:
    per_job = ranks // jobs
    sims = [Rank(targets[i % len(targets)], f"scale-{tag}-r{ranks}-j{jobs}-{i // per_job}",
                 i % per_job, per_job, plan_size) for i in range(per_job * jobs)]
    max_iters = EPOCH_LENGTH * MAX_EPOCHS
    try:
        # Warm-up, not measured: attach (creates each job once), then one report each.
        await asyncio.gather(*(s.attach() for s in sims))
        await asyncio.gather(*(s.report() for s in sims))
        latencies: list[float] = []
        errors = 0
        pause = report_every * iteration_ms / 1e3

        async def loop(sim: Rank, stop_at: float) -> None:
            nonlocal errors
            if pause:  # paced ranks start spread over one interval, as real ones drift
                await asyncio.sleep(random.uniform(0, pause))
            while time.perf_counter() < stop_at:
                sim.iteration = (sim.iteration + report_every) % max_iters
                start = time.perf_counter()
                try:
                    await sim.report()
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)
                if pause:  # no sleeping past the end of the measured window
                    await asyncio.sleep(min(pause, max(0.0, stop_at - time.perf_counter())))

        cpu_before = sum(cpu_seconds(p) for p in server_pids)
        redis_before = cpu_seconds(redis_pid)
        begin = time.perf_counter()
        await asyncio.gather(*(loop(s, begin + seconds) for s in sims))
        elapsed = time.perf_counter() - begin
        cpu = sum(cpu_seconds(p) for p in server_pids) - cpu_before
        redis_cpu = cpu_seconds(redis_pid) - redis_before
    finally:
        await asyncio.gather(*(s.close() for s in sims))
    latencies.sort()
    return Cell(ranks, jobs, len(latencies), elapsed,
                statistics.median(latencies) * 1e3 if latencies else float("nan"),
                percentile(latencies, 0.99) * 1e3, cpu, redis_cpu, errors)


def parse_grid(text: str) -> list[tuple[int, int]]:
    cells = []
    for item in text.split(","):
        ranks, jobs = (int(x) for x in item.lower().split("x"))
        if jobs < 1 or ranks < jobs or ranks % jobs:
            raise argparse.ArgumentTypeError(f"{item}: ranks must be a multiple of jobs")
        cells.append((ranks, jobs))
    if (1, 1) not in cells:
        cells.insert(0, (1, 1))  # the baseline every ratio is against
    return cells


def table(cells: list[Cell], title: str, base: Cell, *, paced: bool = False) -> list[str]:
    lines = [
        title,
        "",
        "| ranks | jobs | reports | reports/s | p50 ms | p99 ms | server CPU ms/report "
        "| Redis CPU ms/report | errors | reports/s vs 1 rank | p50 vs 1 rank "
        "| server CPU/report vs 1 rank |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(
            f"| {c.ranks} | {c.jobs} | {c.reports} | {c.rps:.0f} | {c.p50_ms:.2f} "
            f"| {c.p99_ms:.2f} | {c.server_cpu_ms:.3f} | {c.redis_cpu_ms:.3f} | {c.errors} "
            f"| {'(paced)' if paced else f'{c.rps / base.rps:.2f}'} "
            f"| {c.p50_ms / base.p50_ms:.2f} "
            f"| {c.server_cpu_ms / base.server_cpu_ms:.2f} |")
    return lines


async def run_all(targets: list[str], grid: list[tuple[int, int]], args: argparse.Namespace,
                  server_pids: list[int], redis_pid: int) -> tuple[list[Cell], list[Cell]]:
    closed, paced = [], []
    for ranks, jobs in grid:
        cell = await run_cell(targets, ranks, jobs, seconds=args.seconds,
                              plan_size=args.plan_size, report_every=args.report_every,
                              iteration_ms=args.iteration_ms, server_pids=server_pids,
                              redis_pid=redis_pid, tag="c")
        print(f"{ranks:>4} ranks x {jobs:>2} jobs: {cell.rps:7.0f} reports/s  p50 "
              f"{cell.p50_ms:6.2f} ms  p99 {cell.p99_ms:7.2f} ms  server CPU "
              f"{cell.server_cpu_ms:.3f} ms/report  errors {cell.errors}", flush=True)
        closed.append(cell)
    if args.paced_ms > 0:
        for ranks, jobs in grid[-1:]:
            cell = await run_cell(targets, ranks, jobs, seconds=args.seconds,
                                  plan_size=args.plan_size, report_every=args.report_every,
                                  iteration_ms=args.paced_ms, server_pids=server_pids,
                                  redis_pid=redis_pid, tag="p")
            print(f"paced {ranks} ranks x {jobs} jobs: {cell.rps:.0f} reports/s  p50 "
                  f"{cell.p50_ms:.2f} ms  p99 {cell.p99_ms:.2f} ms", flush=True)
            paced.append(cell)
    return closed, paced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per cell")
    parser.add_argument("--grid", type=parse_grid, default=FULL_GRID,
                        help="cells as RANKSxJOBS,... (default: 1x1,16x1,16x4,16x16,64x1,"
                             "64x4,64x16,256x1,256x4,256x16)")
    parser.add_argument("--plan-size", type=int, default=256,
                        help="iterations of plan asked for per report (client default 256)")
    parser.add_argument("--report-every", type=int, default=128,
                        help="iterations between a rank's reports (client: half a plan)")
    parser.add_argument("--iteration-ms", type=float, default=0.0,
                        help="simulated time per training iteration in the grid (0: closed "
                             "loop, report as soon as the previous one is answered)")
    parser.add_argument("--paced-ms", type=float, default=10.0,
                        help="also run the last cell of the grid paced at this many ms per "
                             "simulated iteration (0: skip)")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(data_dir=Path(tmp) / "redis",
                            extra_args=["--appendfsync", "everysec"])
        servers: list[ServerProcess] = []
        try:
            servers = [ServerProcess(redis_url=redis.url).start() for _ in range(2)]
            pids = [s.proc.pid for s in servers if s.proc is not None]
            assert redis.process is not None
            closed, paced = asyncio.run(run_all([s.target for s in servers], args.grid, args,
                                                pids, redis.process.pid))
        finally:
            for server in servers:
                server.stop()
            redis.close()
    mode = ("closed loop: each rank reports again as soon as it is answered"
            if args.iteration_ms == 0 else f"paced: {args.iteration_ms} ms per iteration")
    lines = table(closed, (
        f"Two `paramsched serve` processes on one Redis (AOF everysec), ranks alternating "
        f"between them; {mode}; a report every {args.report_every} iterations asking for "
        f"{args.plan_size} iterations of plan (2 groups x 2 params), with the end of the "
        f"plan held and `skip_held` as the client sends them; {args.seconds:g} s "
        f"per cell; {os.cpu_count()} CPUs shared by the client, both servers and Redis. "
        "Server CPU = both server processes together. Ratios against the 1 rank x 1 job "
        "cell of this run."), closed[0])
    if paced:
        lines.append("")
        lines += table(paced, (
            f"Paced: each rank spends {args.paced_ms:g} ms per simulated iteration, so it "
            f"reports every {args.report_every * args.paced_ms / 1e3:g} s (the load of a "
            "real job with fast steps); ratios against the closed-loop 1 rank x 1 job cell "
            "above (one report in flight: the unloaded latency)."), closed[0], paced=True)
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
