"""Previews computed in worker processes: the values a spec would give, a page at a time.

A preview is pure computation on what the request carries (the spec, decisions, a page
token), so it runs in a process of its own: replaying in a worker *thread* would hold
the server's GIL and slow every other job's reports, however few threads there are. A
page is bounded by the cost budget (``pages.affordable``) and the caller's deadline,
and the worker parses, validates and computes everything; the server process only
hands the request over and the page back.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument
from ..schedules import ConfigError, GroupValues, MetricsError
from ..schedules.reschedule import Schedule
from . import pages
from .inputs import Limits, config_error, parse_spec
from .pages import Page


@dataclass(frozen=True)
class PreviewRequest:
    """Everything one preview page needs, as plain data (it crosses a process)."""

    spec_data: dict[str, Any]
    start: int
    stop: int
    decisions: dict[int, dict[str, float] | None]
    stride: int
    page_token: str
    deadline: float | None  # time.monotonic(), the same clock in every process
    max_values_cells: int
    max_carried: int
    limits: Limits


def preview_page(request: PreviewRequest) -> Page:
    """One page of a preview (raises the service's errors, which cross processes)."""
    spec = parse_spec(request.spec_data, limits=request.limits)
    window = pages.window(request.start, request.stop, request.stride, spec.max_iters)
    schedule = Schedule(spec)
    for epoch, metrics in request.decisions.items():
        try:
            schedule.check_metrics(epoch, metrics)
        except MetricsError as exc:
            raise InvalidArgument(exc.reason, field=f"decisions[{epoch}].{exc.field}") from None
    chosen = dict(request.decisions)
    subject = [spec.to_dict(), sorted([e, m] for e, m in chosen.items())]
    bound = pages.binding("preview", subject, request.start, request.stop, request.stride)
    first, carried = pages.read_token(request.page_token, window, bound)
    if carried is not None:  # the previous page's last state: no replay from 0
        pages.seed_carried(schedule, carried, window, first)
    replay = schedule.replay_distance(first)
    width = spec.num_groups * len(schedule.params)
    count = pages.affordable(request.max_values_cells, width, replay,
                             window.points_from(first), first=first, stride=window.stride,
                             preview=True)
    work = pages.Work(request.deadline)
    reached = [first]  # the furthest iteration computed: its state is kept

    def values_range(a: int, b: int) -> list[GroupValues]:
        try:
            got = schedule.values_range(a, b, chosen)
        except ConfigError as exc:
            raise config_error(exc, "spec") from None
        reached[0] = max(reached[0], a + len(got) - 1)
        return got

    rows, missing = pages.compute(values_range, window, first, count, work,
                                  replay_from=first - replay)
    keyframe = pages.keyframe_to_carry(schedule, window, first, rows, missing, chosen,
                                       reached[0])
    return pages.finish(spec, schedule, window, first, rows, missing, bound, "", 0,
                        keyframe=keyframe, max_carried=request.max_carried)


_pools: dict[int, ProcessPoolExecutor] = {}


def _background_priority() -> None:
    """Worker processes yield the CPU to the server: its reports come first."""
    with contextlib.suppress(OSError):  # not permitted: the same priority, still no GIL
        os.nice(10)


def _pool_size(workers: int) -> int:
    """At most one process fewer than the CPUs, so the server keeps one."""
    return max(1, min(workers, (os.cpu_count() or 2) - 1))


def pool(workers: int) -> ProcessPoolExecutor:
    """The process pool of ``workers`` processes (at most one fewer than the CPUs, so
    the server keeps one), shared by every service of this process (tests start many).
    Spawned, not forked: the server has threads (gRPC)."""
    workers = _pool_size(workers)
    found = _pools.get(workers)
    if found is None:
        found = _pools[workers] = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_background_priority)
    return found


def reset(workers: int) -> None:
    """Drop the pool of ``workers`` (a worker died: a broken pool refuses all work)."""
    broken = _pools.pop(_pool_size(workers), None)
    if broken is not None:
        broken.shutdown(wait=False, cancel_futures=True)


@atexit.register
def _shutdown() -> None:
    for executor in _pools.values():
        executor.shutdown(wait=False, cancel_futures=True)
