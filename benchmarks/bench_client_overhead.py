"""Per-iteration cost of an attached optimizer vs scheduling the same config locally.

Four loops over the same tiny SGD optimizer, in the same process, interleaved round
by round so that drift in machine speed hits them alike:

* bare: ``optimizer.step()`` only (the baseline every overhead is measured against);
* mmengine: + MMEngine's schedulers stepped the way ``ParamSchedulerHook`` does
  (every ``by_epoch=False`` scheduler after each iteration, every ``by_epoch=True``
  one after each epoch);
* torch: + torch's own ``LRScheduler`` for the same curve (``SequentialLR`` of
  ``LinearLR`` and ``CosineAnnealingLR``), stepped after each iteration;
* paramsched: the optimizer attached to a job on a real ``paramsched serve`` process
  (loopback; when the benchmark starts the server it pins it to its own CPU, as on a
  separate machine), ``handle.end_epoch()`` after each epoch; reports and refills run
  on the client's background thread, inside the measured time.

Two measurements, both against MMEngine's local stepping in the same run:

* steady state: each loop runs ``--iters`` iterations per round and is timed after its
  first 2000 (in every loop alike);
* whole jobs (``--job-iters``, 4000 by default, as a short fine-tuning job): a fresh
  job per round, timed from the first line of set-up (building MMEngine's schedulers;
  ``client.attach``, its RPC included) to the end of the last iteration, 31 jobs of
  each kind by default, bare first and the two schedulers in alternating order. An
  attached loop starts on a short plan (``plan_size``, 256), has a longer one on the
  wire when ``attach`` returns and grows it with the observed iteration rate; this is
  where a start-up that waits for refills shows.

The optimizer has two param groups (a weight group and a bias group), as in the
report that asked for the whole-job figure.

Overhead = time per iteration minus the same round's bare loop, as wall time and as
process CPU time (every thread of the process; the CPU figure is steadier on a busy
machine); medians over the rounds. The figure to watch is ``paramsched / mmengine``
(target <= 1.0). Usage:

    .venv/bin/python benchmarks/bench_client_overhead.py [--iters 20000] [--rounds 7]
        [--job-iters 4000] [--job-rounds 31]   # --job-iters 0: steady state only
        [--target host:port]   # default: start `paramsched serve` on a temp dir

The whole-job figure also prints, per job, how many iterations found their values
missing from the plan (the loop waited for the network there): 0 is the goal; the
median ``attach`` time (the server's create-and-first-plan RPC: part of the
whole-job cost that no client change removes); and the paramsched / MMEngine ratio
twice, from the medians of the overheads and as the median of each round's ratio
(rounds alternate which of the two runs first).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from paramsched import Client

EPOCH_LENGTH = 100
WARMUP = 500
CONFIG: list[dict[str, Any]] = [
    {"type": "LinearLR", "start_factor": 0.001, "by_epoch": False, "begin": 0, "end": WARMUP},
    {"type": "CosineAnnealingLR", "by_epoch": True, "convert_to_iter_based": True},
]


def make_optimizer() -> torch.optim.Optimizer:
    model = torch.nn.Linear(16, 16)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    groups = [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.01}]
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)


#: iterations run before the clock starts, in every loop alike: the steady state is
#: what is compared (an attached loop's first plans are short; see the module doc).
SKIP = 2000


Timing = tuple[float, float]  # (wall seconds, process CPU seconds) per iteration


def time_loop(step: Callable[[int], None], iters: int) -> Timing:
    """Per-iteration wall time and process CPU time (all threads: the client's
    background thread counts) of ``step(t)``, timed over ``t`` in ``[SKIP, iters)``."""
    skip = min(SKIP, iters // 2)
    for t in range(skip):
        step(t)
    wall, cpu = time.perf_counter(), time.process_time()
    for t in range(skip, iters):
        step(t)
    n = iters - skip
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def bare(iters: int, **_: Any) -> Timing:
    opt = make_optimizer()

    def step(t: int) -> None:
        opt.step()

    return time_loop(step, iters)


def _mmengine_step(opt: torch.optim.Optimizer, iters: int) -> Callable[[int], None]:
    """MMEngine's schedulers for ``CONFIG`` (built now) and one Runner iteration."""
    import mmengine.optim.scheduler  # noqa: F401  (registers the scheduler types)
    from mmengine.registry import PARAM_SCHEDULERS

    epochs = iters // EPOCH_LENGTH
    scheds = []
    for cfg in CONFIG:
        cfg = dict(cfg)
        cfg.setdefault("end", epochs if cfg.get("by_epoch", True) else iters)
        scheds.append(
            PARAM_SCHEDULERS.build(
                cfg, default_args={"optimizer": opt, "epoch_length": EPOCH_LENGTH}
            )
        )
    per_iter = [s for s in scheds if not s.by_epoch]
    per_epoch = [s for s in scheds if s.by_epoch]

    def step(t: int) -> None:
        opt.step()
        for s in per_iter:  # ParamSchedulerHook.after_train_iter
            s.step()
        if (t + 1) % EPOCH_LENGTH == 0:
            for s in per_epoch:  # ParamSchedulerHook.after_train_epoch
                s.step()

    return step


def mmengine(iters: int, **_: Any) -> Timing:
    opt = make_optimizer()
    return time_loop(_mmengine_step(opt, iters), iters)


def torch_lr_scheduler(iters: int, **_: Any) -> Timing:
    from torch.optim import lr_scheduler

    opt = make_optimizer()
    sched = lr_scheduler.SequentialLR(
        opt,
        [
            lr_scheduler.LinearLR(opt, start_factor=0.001, total_iters=WARMUP),
            lr_scheduler.CosineAnnealingLR(opt, T_max=iters - WARMUP),
        ],
        milestones=[WARMUP],
    )

    def step(t: int) -> None:
        opt.step()
        sched.step()

    return time_loop(step, iters)


def paramsched(iters: int, *, client: Client, job_id: str, **_: Any) -> Timing:
    opt = make_optimizer()
    handle = client.attach(
        opt, job_id, CONFIG, epoch_length=EPOCH_LENGTH, max_epochs=iters // EPOCH_LENGTH
    )

    def step(t: int) -> None:
        opt.step()
        if (t + 1) % EPOCH_LENGTH == 0:
            handle.end_epoch()

    try:
        return time_loop(step, iters)
    finally:
        handle.detach()


def whole_job(kind: str, iters: int, client: Client | None = None) -> Timing:
    """Per-iteration wall and CPU time of one whole job: set-up (MMEngine's schedulers
    built, or ``attach``) and every iteration from 0 on; a fresh job each time."""
    opt = make_optimizer()
    handle = None
    wall, cpu = time.perf_counter(), time.process_time()
    if kind == "mmengine":
        step = _mmengine_step(opt, iters)
    elif kind == "paramsched":
        assert client is not None
        STALLS.clear()
        handle = client.attach(opt, f"bench-job-{uuid.uuid4().hex[:8]}", CONFIG,
                               epoch_length=EPOCH_LENGTH, max_epochs=iters // EPOCH_LENGTH)
        ATTACH_SECONDS.append(time.perf_counter() - wall)

        def step(t: int) -> None:
            opt.step()
            if (t + 1) % EPOCH_LENGTH == 0:
                handle.end_epoch()
    else:
        def step(t: int) -> None:
            opt.step()
    for t in range(iters):
        step(t)
    timing = (time.perf_counter() - wall) / iters, (time.process_time() - cpu) / iters
    if handle is not None:
        handle.detach()
    return timing


JOB_KINDS = ("bare", "mmengine", "paramsched")
#: iterations of the current whole job whose values were not in the plan when the
#: step before them ended (the loop then waited for the network, unless a pending
#: ReduceOnPlateau decision was the reason; this config has none).
STALLS: list[int] = []
#: wall seconds of each ``attach`` of a whole job (the server's RPC, mostly).
ATTACH_SECONDS: list[float] = []


def count_stalls() -> None:
    """Count where an attached loop outran its plan (the handle's slow path)."""
    from paramsched.client.handle import ScheduleHandle

    slow = getattr(ScheduleHandle, "_plan_ran_out", None)
    if slow is None or getattr(slow, "counted", False):
        return

    def counted(self: Any, t: int) -> None:
        STALLS.append(t)
        slow(self, t)

    counted.counted = True  # type: ignore[attr-defined]
    ScheduleHandle._plan_ran_out = counted  # type: ignore[method-assign]


def run_jobs(target: str, iters: int, rounds: int) -> dict[str, Any]:
    """Whole jobs, interleaved round by round; overheads against that round's bare job."""
    iters -= iters % EPOCH_LENGTH
    client = Client(target)
    extra: dict[str, dict[str, list[float]]] = {k: {n: [] for n in JOB_KINDS} for k in TIMES}
    absolute: dict[str, dict[str, list[float]]] = {k: {n: [] for n in JOB_KINDS} for k in TIMES}
    stalls: list[int] = []
    ratios: dict[str, list[float]] = {k: [] for k in TIMES}
    count_stalls()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind in JOB_KINDS:  # warm-up: imports, connections, caches
            whole_job(kind, iters, client)
        ATTACH_SECONDS.clear()
        for r in range(rounds):
            got = {}
            # bare first, then the two schedulers in alternating order: a machine that
            # speeds up or slows down within a round favours neither.
            order = ("bare", "mmengine", "paramsched") if r % 2 == 0 else (
                "bare", "paramsched", "mmengine")
            for kind in order:
                got[kind] = whole_job(kind, iters, client)
                if kind == "paramsched":
                    stalls.append(len(STALLS))
            again = whole_job("bare", iters)
            base = [(got["bare"][i] + again[i]) / 2 for i in range(2)]
            for i, time_kind in enumerate(TIMES):
                mm = got["mmengine"][i] - base[i]
                if mm > 0:
                    ratios[time_kind].append((got["paramsched"][i] - base[i]) / mm)
            for i, time_kind in enumerate(TIMES):
                for kind, timing in got.items():
                    absolute[time_kind][kind].append(1e6 * (base[i] if kind == "bare"
                                                            else timing[i]))
                    extra[time_kind][kind].append(1e6 * (timing[i] - base[i]))
    client.close()
    result: dict[str, Any] = {
        "iters": iters, "rounds": rounds, "stalls_per_job": stalls,
        "attach_ms_median": 1e3 * statistics.median(ATTACH_SECONDS),
    }
    for time_kind in TIMES:
        plus = {k: statistics.median(v) for k, v in extra[time_kind].items() if k != "bare"}
        result[time_kind] = {
            "us_per_iter": {k: statistics.median(v) for k, v in absolute[time_kind].items()},
            "overhead_us_per_iter": plus,
            "ratio_paramsched_vs_mmengine": plus["paramsched"] / plus["mmengine"],
            # The same ratio taken round by round, then the median: a second estimate
            # that a few noisy rounds move less; the two disagreeing says "noisy run".
            "ratio_per_round_median": (statistics.median(ratios[time_kind])
                                       if ratios[time_kind] else float("nan")),
        }
    return result


TIMES = ("wall", "cpu")
LOOPS: dict[str, Callable[..., Timing]] = {
    "bare": bare,
    "mmengine": mmengine,
    "torch": torch_lr_scheduler,
    "paramsched": paramsched,
}


def run(target: str, iters: int, rounds: int) -> dict[str, Any]:
    """Rounds of every loop; each round's overheads are paired with that round's bare
    loop (run first and last in the round, averaged), and the medians reported."""
    iters -= iters % EPOCH_LENGTH
    client = Client(target)
    job_id = f"bench-overhead-{uuid.uuid4().hex[:8]}"
    absolute: dict[str, dict[str, list[float]]] = {k: {n: [] for n in LOOPS} for k in TIMES}
    extra: dict[str, dict[str, list[float]]] = {k: {n: [] for n in LOOPS} for k in TIMES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for loop in LOOPS.values():  # warm-up: imports, the job, caches
            loop(min(iters, 1000), client=client, job_id=job_id + "-warm")
        for _ in range(rounds):
            got = {name: loop(iters, client=client, job_id=job_id) for name, loop in LOOPS.items()}
            again = bare(iters)
            base = [(got["bare"][i] + again[i]) / 2 for i in range(2)]
            for i, kind in enumerate(TIMES):
                for name, timing in got.items():
                    absolute[kind][name].append(1e6 * (base[i] if name == "bare" else timing[i]))
                    extra[kind][name].append(1e6 * (timing[i] - base[i]))
    client.close()
    result: dict[str, Any] = {"iters": iters, "rounds": rounds}
    for kind in TIMES:
        us = {name: statistics.median(v) for name, v in absolute[kind].items()}
        plus = {name: statistics.median(v) for name, v in extra[kind].items() if name != "bare"}
        result[kind] = {
            "us_per_iter": us,
            "overhead_us_per_iter": plus,
            "ratio_paramsched_vs_mmengine": plus["paramsched"] / plus["mmengine"],
            "ratio_paramsched_vs_torch": plus["paramsched"] / plus["torch"],
        }
    return result


def pin_apart(server_pid: int) -> None:
    """Give the server its own CPU, as it would have on its own machine: on a small
    box the server's plan computation otherwise steals the training thread's core."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return
    os.sched_setaffinity(server_pid, {cpus[-1]})
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), {cpus[-1]})
    os.sched_setaffinity(0, set(cpus[:-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--target", help="a running server (default: start one)")
    parser.add_argument("--job-iters", type=int, default=4000,
                        help="length of each whole job (0: skip the whole-job figure)")
    parser.add_argument("--job-rounds", type=int, default=31,
                        help="whole jobs per kind (medians over them; default 31)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    jobs: dict[str, Any] | None = None
    if args.target:
        result = run(args.target, args.iters, args.rounds)
        if args.job_iters:
            jobs = run_jobs(args.target, args.job_iters, args.job_rounds)
    else:
        from process_harness import ServerProcess

        with tempfile.TemporaryDirectory() as data, \
                ServerProcess(data_dir=Path(data)).start() as server:
            assert server.proc is not None
            pin_apart(server.proc.pid)
            result = run(server.address, args.iters, args.rounds)
            if args.job_iters:
                jobs = run_jobs(server.address, args.job_iters, args.job_rounds)
    if jobs is not None:
        result["whole_job"] = jobs
    print(f"steady state: {result['iters']} iterations x {result['rounds']} rounds "
          "(timed after the first 2000), medians per iteration")
    for kind in TIMES:
        part = result[kind]
        us, extra = part["us_per_iter"], part["overhead_us_per_iter"]
        print(f"{kind} time:")
        for name in LOOPS:
            added = f"  ({extra[name]:+.2f} us)" if name in extra else ""
            print(f"  {name:<11} {us[name]:8.2f} us/iter{added}")
        print(f"  paramsched / mmengine overhead: {part['ratio_paramsched_vs_mmengine']:.2f}")
        print(f"  paramsched / torch LRScheduler overhead: {part['ratio_paramsched_vs_torch']:.2f}")
    if jobs is not None:
        print(f"whole jobs from set-up / attach: {jobs['iters']} iterations x {jobs['rounds']} "
              "jobs, medians per iteration")
        for kind in TIMES:
            part = jobs[kind]
            us, extra = part["us_per_iter"], part["overhead_us_per_iter"]
            print(f"{kind} time:")
            for name in JOB_KINDS:
                added = f"  ({extra[name]:+.2f} us)" if name in extra else ""
                print(f"  {name:<11} {us[name]:8.2f} us/iter{added}")
            print(f"  paramsched / mmengine overhead: {part['ratio_paramsched_vs_mmengine']:.2f}"
                  f"  (median of per-round ratios: {part['ratio_per_round_median']:.2f})")
        print(f"attach (its RPC included), median: {jobs['attach_ms_median']:.2f} ms")
        print(f"iterations that waited for a plan, per job: {jobs['stalls_per_job']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
