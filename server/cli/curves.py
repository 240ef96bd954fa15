"""Values as curves: decoded plans, the engine run locally, a progress bar."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from paramsched.api.v1 import scheduler_pb2 as pb

from ..schedules import Decisions, GroupValues, JobSpec, Timeline
from .common import ENGINE_CHUNK, PROGRESS_MIN_ITERATIONS, VALUES_PER_CALL
from .session import Session


# -- values: plans, curves, the engine -----------------------------------------------
@dataclass
class Curves:
    """Values of every param of every group for consecutive iterations from ``start``."""

    start: int
    params: tuple[str, ...]
    num_groups: int
    rows: list[GroupValues] = field(default_factory=list)
    waits_for_epoch: int | None = None  # the rows stop early: a pending plateau decision

    @property
    def stop(self) -> int:
        return self.start + len(self.rows)

    def series(self, param: str, group: int, start: int | None = None,
               stop: int | None = None) -> tuple[list[int], list[float]]:
        """(iterations, values) of one param of one group, optionally cut to [start, stop)."""
        lo = max(self.start, self.start if start is None else start)
        hi = min(self.stop, self.stop if stop is None else stop)
        xs = list(range(lo, hi))
        ys = [self.rows[t - self.start][group][param] for t in xs]
        return xs, ys

    def extend(self, other: Curves) -> None:
        self.rows.extend(other.rows)
        self.waits_for_epoch = other.waits_for_epoch


def decode_plan(plan: pb.Plan) -> Curves:
    """A Plan's flat ``values[(i * num_groups + g) * len(params) + p]`` as Curves."""
    params, groups = tuple(plan.params), plan.num_groups
    width = groups * len(params)
    values = list(plan.values)
    rows = []
    for i in range(plan.num_iterations):
        row = values[i * width:(i + 1) * width]
        rows.append([{p: row[g * len(params) + k] for k, p in enumerate(params)}
                     for g in range(groups)])
    waits = plan.waits_for_epoch if plan.HasField("waits_for_epoch") else None
    return Curves(plan.start_iteration, params, groups, rows, waits)


class ProgressBar:
    """A one-line text bar, redrawn in place; only on a terminal, so logs stay clean."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None,
                 enabled: bool | None = None, width: int = 30) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = total >= PROGRESS_MIN_ITERATIONS and self.stream.isatty()
        self.enabled = enabled
        self.width = width

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        filled = self.width * done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        percent = 100 * done // self.total
        self.stream.write(f"\r{self.label} [{bar}] {percent:3d}% {done}/{self.total}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def fetch_values(session: Session, job: pb.Job, start: int, stop: int,
                 progress: ProgressBar | None = None) -> Curves:
    """GetValues in bounded chunks (a long job's values exceed one message's limit)."""
    per_call = max(1, VALUES_PER_CALL // max(1, job.num_groups * max(1, len(job.params))))
    curves: Curves | None = None
    t = start
    while t < stop:
        plan = session.call("GetValues", pb.GetValuesRequest(
            job_id=job.job_id, start_iteration=t, stop_iteration=min(stop, t + per_call))).plan
        chunk = decode_plan(plan)
        if curves is None:
            curves = chunk
        else:
            curves.extend(chunk)
        t += len(chunk.rows)
        if progress is not None:
            progress.update(t - start)
        if not chunk.rows or chunk.waits_for_epoch is not None:
            break
    if progress is not None:
        progress.close()
    return curves or Curves(start, tuple(job.params), job.num_groups)


def simulate(spec: JobSpec, progress: ProgressBar | None = None) -> Curves:
    """A spec's values for iterations 0..max_iters, computed locally in chunks.

    ReduceOnPlateau depends on validation metrics nobody has here: every epoch is
    simulated as "no validation ran", so those schedulers hold their value.
    """
    decisions: Decisions = {}
    if any(s.is_plateau for s in spec.schedulers) and spec.max_epochs:
        decisions = {epoch: None for epoch in range(spec.max_epochs)}
    timeline = Timeline(spec)
    curves = Curves(0, spec.params, spec.num_groups)
    total = spec.max_iters + 1
    for start in range(0, total, ENGINE_CHUNK):
        stop = min(total, start + ENGINE_CHUNK)
        curves.rows.extend(timeline.values_range(start, stop, decisions, partial=True))
        if progress is not None:
            progress.update(len(curves.rows))
        if len(curves.rows) < stop:
            break
    if progress is not None:
        progress.close()
    return curves
