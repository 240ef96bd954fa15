"""Comparing a change with the schedule it alters, and its guardrails."""

from __future__ import annotations

import math
from typing import Any

from ..errors import InvalidArgument
from ..schedules import (
    GroupValues,
    JobSpec,
)
from ..schedules.reschedule import Schedule
from ..store import (
    JobRecord,
)
from .views import JobView, LoadedJob, RescheduleResult, plan_of


def compare(entry: LoadedJob, after: Schedule, change: Any, record: JobRecord,
             preview: int) -> RescheduleResult:
    s = change.start
    stop = s + preview
    before_values = entry.schedule.values_range(s, stop, record.decisions)
    after_values = after.values_range(s, stop, record.decisions)
    before = plan_of(entry.spec, entry.schedule, s, min(stop, entry.schedule.max_iters + 1),
                     before_values, record.generation)
    after_plan = plan_of(entry.spec, after, s, min(stop, after.max_iters + 1), after_values,
                         record.generation)

    def at_start(values: list[GroupValues]) -> list[dict[str, float]]:
        if not values:
            return []
        return [{p: g[p] for p in change.params if p in g} for g in values[0]]

    return RescheduleResult(JobView.of(record, entry), s, before, after_plan, False, {},
                            at_start(before_values), at_start(after_values))

def check_guardrails(spec: JobSpec, after: Schedule, change: Any, result: RescheduleResult,
                force: bool, decisions: Any) -> None:
    """Bounds hold for every value the change produces (never forced); a jump at its
    first iteration beyond ``max_jump_factor`` needs ``force``."""
    check_bounds(spec, after, change, decisions)
    if spec.max_jump_factor is not None and not force:
        for g, (old, new) in enumerate(zip(result.before_at, result.after_at, strict=False)):
            for p, new_value in new.items():
                old_value = old.get(p)
                if old_value is None:
                    continue
                low, high = sorted((abs(old_value), abs(new_value)))
                jump = math.inf if low == 0 and high > 0 else (high / low if low else 1.0)
                if jump > spec.max_jump_factor:
                    raise InvalidArgument(
                        f"the change moves {p} of group {g} from {old_value!r} to "
                        f"{new_value!r} at iteration {change.start}, a jump of "
                        f"{jump:.3g}x beyond max_jump_factor={spec.max_jump_factor}; "
                        "repeat with force to apply it", field="force")

def changing_until(change: Any, after: Schedule) -> int:
    """The iteration after which a change's values stay as they are (exclusive): for a
    ``replace`` change, one epoch past the end of its last scheduler's window (values
    are held after it); other modes follow the curve beneath to the end of training."""
    end_of_training = after.max_iters + 1
    if change.mode != "replace" or change.timeline is None:
        return end_of_training
    sub = change.timeline.spec
    length = sub.epoch_length or 1
    last = 0.0
    for scheduler in sub.schedulers:
        end = scheduler.end * length if scheduler.by_epoch else scheduler.end
        if not math.isfinite(end):
            return end_of_training
        last = max(last, float(end))
    return min(end_of_training, change.start + math.ceil(last) + length + 1)


def check_bounds(spec: JobSpec, after: Schedule, change: Any, decisions: Any) -> None:
    """Every value the change produces is within the bounds. It costs the range where
    the change's values move, not the job's length: past it they are held."""
    bounds = {p: (lo, hi) for p, lo, hi in spec.bounds}
    watched = [p for p in change.params if p in bounds]
    if not watched:
        return
    chunk = 65_536
    stop = changing_until(change, after)
    for start in range(change.start, stop, chunk):
        values = after.values_range(start, min(start + chunk, stop), decisions)
        for offset, step in enumerate(values):
            for g in change.groups:
                for p in watched:
                    lo, hi = bounds[p]
                    v = step[g][p]
                    if (lo is not None and v < lo) or (hi is not None and v > hi):
                        raise InvalidArgument(
                            f"the change takes {p} of group {g} to {v!r} at iteration "
                            f"{start + offset}, outside the job's bounds [{lo}, {hi}]",
                            field=f"bounds.{p}")
        if len(values) < min(chunk, stop - start):
            return
