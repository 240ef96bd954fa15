"""Random access into a schedule: the values at iteration t, cold and warm.

cold: a fresh Timeline (no keyframes yet) asked for iteration t; it replays once from
      iteration 0, leaving keyframes behind.
warm: the same Timeline asked for iterations near t afterwards; it replays at most
      one keyframe interval.
The baseline, measured in the same run, is a plain replay from iteration 0 for every
query (what the server would do without keyframes): warm/baseline is the speed-up.

    .venv/bin/python benchmarks/bench_random_access.py [--max-exp 7] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from paramsched.server.schedules import Timeline, build_job_spec
from paramsched.server.schedules.replay import Replayer


def job(max_iters: int):  # type: ignore[no-untyped-def]
    """A typical LLM-style schedule: iteration warm-up, then cosine to the end, with
    momentum and weight decay scheduled too (three chainable schedulers every iteration)."""
    warmup = max(1, max_iters // 100)
    cfg = [
        dict(type="LinearLR", start_factor=1e-3, by_epoch=False, end=warmup),
        dict(type="CosineAnnealingLR", by_epoch=False, begin=warmup, eta_min_ratio=0.01),
        dict(type="CosineAnnealingMomentum", by_epoch=False, eta_min=0.85),
        dict(type="ExponentialParamScheduler", param_name="weight_decay", gamma=0.999999,
             by_epoch=False),
    ]
    groups = [{"lr": 3e-4, "momentum": 0.95, "weight_decay": 0.1},
              {"lr": 3e-4, "momentum": 0.95, "weight_decay": 0.0}]
    return build_job_spec(cfg, groups, epoch_length=1000, max_iters=max_iters)


def seconds(fn, repeat: int = 1) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(t: int, rng: random.Random) -> dict[str, float]:
    spec = job(max(t, 1000))
    timeline = Timeline(spec)
    cold = seconds(lambda: timeline.values_at(t))
    near = [max(0, t - rng.randrange(0, 4096)) for _ in range(200)]
    warm = seconds(lambda: [timeline.values_at(x) for x in near]) / len(near)
    replayer = Replayer(spec)
    probe = near[:3] if t <= 10**6 else near[:1]

    def from_zero() -> None:
        for x in probe:
            state = replayer.initial.copy()
            replayer.advance(state, x, {})

    baseline = seconds(from_zero) / len(probe)
    return {"t": t, "cold_s": cold, "warm_s": warm, "replay_from_0_s": baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-exp", type=int, default=6, help="largest t is 10**max_exp")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    rng = random.Random(0)
    rows = [measure(10**e, rng) for e in range(3, args.max_exp + 1)]
    lines = [
        "| t | cold query | warm query | replay from 0 (baseline) | warm / baseline |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| 10^{len(str(int(r['t']))) - 1} | {r['cold_s'] * 1e3:.1f} ms "
            f"| {r['warm_s'] * 1e6:.0f} us | {r['replay_from_0_s'] * 1e3:.1f} ms "
            f"| {r['warm_s'] / r['replay_from_0_s']:.5f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
