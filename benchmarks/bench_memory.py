"""Memory per 1,000 jobs: server RSS and Redis ``used_memory`` (and the embedded store).

For each store, one ``paramsched serve`` process is started on an empty store and
warmed up with one job (so code paths, imports and connection pools are in the
baseline, not in the per-job figure). Then jobs are created in steps (``--jobs``,
default 1,000 then 5,000 in total); every job is created with ``AttachJob`` and
reports once (``ReportProgress`` at iteration 128 with a 256-iteration plan: the
first refill of a rank using the client's defaults). After each step the server's ``VmRSS``
(/proc/<pid>/status) and Redis ``INFO memory`` ``used_memory`` (or the embedded
store's files on disk) are read; the deltas against the warmed-up empty baseline of
the same run, per 1,000 jobs, are the figures.

Every job has its own spec (a typical warm-up + cosine config; the epoch length
differs per job), so no two jobs share a cached spec or schedule. The server caches
at most 256 parsed jobs (``SchedulerService.cache_size``) within ``--cache-bytes``, so
past that count the server's memory reflects the bounded cache (and what the
allocator keeps), while Redis grows with every job.

A second table shows what a job costs the server once it has been running: jobs
report every 128 iterations up to ``--long-iters`` (20,480) as a rank does (with the
end of the plan it holds and ``skip_held``). A first batch (``--long-warmup``, 100
jobs, as many as measured) brings the server to its running shape (RPC buffers of
that many concurrent jobs, allocator arenas, the reporting code paths); the baseline
is read after it, and the
figure is the RSS delta per job of the next ``--long-jobs`` (100), run the same way:
what one more long-running job costs. A job's cached schedule holds a few replay
states and a packed cache of recent values (``Timeline.max_cached_cells`` numbers per
timeline) whatever its age, and the whole job cache stays within ``--cache-bytes``;
the goal is at most 64 KiB per long-running job.

    .venv/bin/python benchmarks/bench_memory.py [--jobs 1000,5000] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc

from process_harness import ServerProcess
from redis_harness import RedisServer

MIB = 1024 * 1024


def job_spec(index: int) -> pb.JobSpec:
    """A typical job: iteration warm-up, cosine lr and momentum over 100 epochs, weight
    decay held; two param groups. The epoch length differs per job."""
    config = [
        dict(type="LinearLR", start_factor=0.001, by_epoch=False, end=500),
        dict(type="CosineAnnealingLR", by_epoch=True, T_max=100, convert_to_iter_based=True),
        dict(type="CosineAnnealingMomentum", by_epoch=True, T_max=100, eta_min=0.85,
             convert_to_iter_based=True),
    ]
    spec = pb.JobSpec(param_scheduler_json=json.dumps(config), epoch_length=1000 + index,
                      max_epochs=100)
    for lr, wd in ((0.1, 1e-4), (0.01, 0.0)):
        spec.initial_values.add().values.update({"lr": lr, "momentum": 0.9,
                                                 "weight_decay": wd})
    return spec


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def create_jobs(target: str, start: int, stop: int, concurrency: int = 16) -> None:
    """Jobs ``start .. stop-1``: attach (creates), then one report each."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        queue = iter(range(start, stop))

        async def worker() -> None:
            for i in queue:
                job_id = f"mem-{i:06d}"
                reply = await stub.AttachJob(pb.AttachJobRequest(
                    job_id=job_id, spec=job_spec(i), world_size=8, plan_size=256))
                await stub.ReportProgress(pb.ReportProgressRequest(
                    job_id=job_id, generation=reply.job.generation, rank=1, iteration=128,
                    plan_size=256))

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run_jobs_long(target: str, first: int, count: int, iterations: int) -> None:
    """Jobs ``first .. first+count-1``, each reporting every 128 iterations to ``iterations``
    (a rank that keeps training), the jobs concurrently."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)

        async def one(i: int) -> None:
            job_id = f"long-{i:06d}"
            reply = await stub.AttachJob(pb.AttachJobRequest(
                job_id=job_id, spec=job_spec(i), world_size=1, plan_size=256))
            held = reply.plan.start_iteration + reply.plan.num_iterations
            for it in range(128, iterations + 1, 128):
                plan = (await stub.ReportProgress(pb.ReportProgressRequest(
                    job_id=job_id, generation=reply.job.generation, iteration=it,
                    plan_size=256, held_until=held, skip_held=True))).plan
                held = max(held, plan.start_iteration + plan.num_iterations)

        await asyncio.gather(*(one(i) for i in range(first, first + count)))


@dataclass
class Sample:
    jobs: int
    rss: int
    store: int  # Redis used_memory, or the embedded store's bytes on disk
    seconds: float  # to create this step's jobs


def measure(target: str, pid: int, steps: list[int], store_bytes) -> list[Sample]:  # type: ignore[no-untyped-def]
    asyncio.run(create_jobs(target, 0, 1))  # warm-up job, part of the baseline
    time.sleep(0.5)
    samples = [Sample(0, rss_bytes(pid), store_bytes(), 0.0)]
    done = 1
    for total in steps:
        begin = time.perf_counter()
        asyncio.run(create_jobs(target, done, total + 1))
        elapsed = time.perf_counter() - begin
        done = total + 1
        time.sleep(0.5)
        samples.append(Sample(total, rss_bytes(pid), store_bytes(), elapsed))
    return samples


def rows(store: str, store_what: str, samples: list[Sample]) -> list[str]:
    base = samples[0]
    out = [f"| {store} | 0 (baseline) | {base.rss / MIB:.1f} | | | {base.store / MIB:.2f} "
           f"| | {store_what} |"]
    for s in samples[1:]:
        per_k = 1000 / s.jobs
        out.append(
            f"| {store} | {s.jobs} | {s.rss / MIB:.1f} | {(s.rss - base.rss) * per_k / MIB:.2f} "
            f"| {s.rss / base.rss:.2f} | {s.store / MIB:.2f} "
            f"| {(s.store - base.store) * per_k / MIB:.2f} | {store_what} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", default="1000,5000",
                        help="cumulative job counts to measure at (default 1000,5000)")
    parser.add_argument("--long-jobs", type=int, default=100,
                        help="jobs measured in the long-running table (0: skip it)")
    parser.add_argument("--long-warmup", type=int, default=100,
                        help="long-running jobs run before its baseline is read")
    parser.add_argument("--long-iters", type=int, default=20480,
                        help="iterations each long-running job reports up to")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    steps = sorted(int(x) for x in args.jobs.split(","))
    lines = [
        "Each job: AttachJob with its own typical spec (2 groups x 3 params, 100 epochs) + "
        "one ReportProgress with a 256-iteration plan. Baseline: the server warmed up with "
        "one job. Deltas per 1,000 jobs against that baseline, same run.",
        "",
        "| store | jobs | server RSS MiB | server RSS delta MiB per 1,000 jobs "
        "| RSS vs baseline | store MiB | store delta MiB per 1,000 jobs | store measure |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    timings = []
    long_rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = RedisServer(data_dir=Path(tmp) / "redis",
                                   extra_args=["--appendfsync", "everysec"])
        client = redis.Redis.from_url(redis_server.url)
        server = ServerProcess(redis_url=redis_server.url)
        try:
            server.start()
            assert server.proc is not None

            def used_memory() -> int:
                return int(client.info("memory")["used_memory"])

            samples = measure(server.target, server.proc.pid, steps, used_memory)
            lines += rows("Redis", "Redis INFO used_memory", samples)
            timings += [("Redis", s) for s in samples[1:]]
            server.stop()
            if args.long_jobs > 0:
                server = ServerProcess(redis_url=redis_server.url).start()  # a fresh one
                assert server.proc is not None
                asyncio.run(create_jobs(server.target, 0, 1))  # warm-up, as above
                asyncio.run(run_jobs_long(server.target, 0, args.long_warmup, args.long_iters))
                time.sleep(0.5)
                before = rss_bytes(server.proc.pid)
                begin = time.perf_counter()
                asyncio.run(run_jobs_long(server.target, args.long_warmup, args.long_jobs,
                                          args.long_iters))
                elapsed = time.perf_counter() - begin
                time.sleep(0.5)
                after = rss_bytes(server.proc.pid)
                long_rows = [
                    "",
                    f"Long-running jobs: {args.long_jobs} jobs on a fresh server (Redis store), "
                    f"each reporting every 128 iterations up to iteration {args.long_iters} "
                    f"with 256-iteration plans ({elapsed:.1f} s), after {args.long_warmup} "
                    "such jobs ran on it. Server RSS against the baseline read after those:",
                    "",
                    "| jobs | iterations reported per job | server RSS before MiB "
                    "| after MiB | delta KiB per job | delta MiB per 1,000 such jobs |",
                    "|---:|---:|---:|---:|---:|---:|",
                    f"| {args.long_jobs} | {args.long_iters} | {before / MIB:.1f} "
                    f"| {after / MIB:.1f} | {(after - before) / args.long_jobs / 1024:.0f} "
                    f"| {(after - before) / args.long_jobs * 1000 / MIB:.0f} |",
                ]
        finally:
            server.stop()
            client.close()
            redis_server.close()
        data_dir = Path(tmp) / "embedded"
        server = ServerProcess(data_dir=data_dir)
        try:
            server.start()
            assert server.proc is not None
            samples = measure(server.target, server.proc.pid, steps,
                              lambda: dir_bytes(data_dir))
            lines += rows("embedded (sqlite)", "files under --data-dir", samples)
            timings += [("embedded", s) for s in samples[1:]]
        finally:
            server.stop()
    lines += long_rows
    lines.append("")
    lines.append("Creation time (attach + one report per job, 16 in flight): " + "; ".join(
        f"{name} up to {s.jobs} jobs: {s.seconds:.1f} s" for name, s in timings) + ".")
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
