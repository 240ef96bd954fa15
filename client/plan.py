"""Decoded plans: the values of a window of upcoming iterations, ready to apply.

The server sends ``values[(i * num_groups + g) * len(params) + p]``; decoding copies
that into one flat tuple (one C-level conversion, off the training thread: the
background thread must hold the GIL as briefly as possible while the training thread
runs), and applying iteration ``t`` slices its row out of it. Plans are immutable:
the background thread swaps in a new one with a single attribute store, which the
training thread reads without a lock (values for an iteration never change, so any
plan that covers it holds the same row).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from paramsched.api.v1 import scheduler_pb2

from .errors import ParamschedError

Row = tuple[float, ...]

#: ``refill_at`` of a plan that needs no refill (it reaches the end of the job, or
#: stops at a pending decision that a refill cannot get past).
NEVER = sys.maxsize

#: a plan of ``SHORT_PLAN_FROM`` to ``SHORT_PLAN`` iterations is refilled once a quarter
#: of it is used, any other at half; one that the loop's rate will outgrow (``growing``)
#: asks on the first step it serves. Such a plan is a young one (the client's first
#: plans, 256 iterations by default, while the loop's rate is not known yet or the
#: sizer is still growing them): its refill's round trip and the server's work (which
#: grows with the next plan's size), plus the GIL hand-overs the reply needs on a loop
#: that never blocks, are a large part of what it lasts (asking at a quarter still ran
#: out on a busy machine), so a fast loop's plans double back to back until a long one
#: is there; a slow loop's (it will not grow) ask at a quarter, not every step. A long
#: plan lasts many round trips at any rate; a plan smaller than ``SHORT_PLAN_FROM`` was
#: asked for (``plan_size``) and already refills often.
SHORT_PLAN_FROM = 256
SHORT_PLAN = 2048


def refill_after(n: int, growing: bool = False) -> int:
    """Iterations of an ``n``-iteration plan to run before asking for the next one."""
    if SHORT_PLAN_FROM <= n < SHORT_PLAN:
        return 1 if growing else n // 4
    return max(1, n // 2)


@dataclass(frozen=True, slots=True)
class Plan:
    """Values for iterations ``[start, start + n)``: ``width`` values per iteration
    (``num_groups * len(params)``), flat, in the wire order."""

    start: int
    n: int
    values: tuple[float, ...]
    params: tuple[str, ...]
    num_groups: int
    generation: int
    waits_for_epoch: int | None = None
    refill_at: int = NEVER
    max_iters: int = 0  # the job's length as of this plan (a change may extend it)
    writers: tuple[Any, ...] = ()  # how to write a row into the optimizer (the handle's)

    @property
    def stop(self) -> int:
        return self.start + self.n

    @property
    def width(self) -> int:
        return self.num_groups * len(self.params)

    def covers(self, iteration: int) -> bool:
        return self.start <= iteration < self.start + self.n

    def row(self, iteration: int) -> Row:
        width = self.num_groups * len(self.params)
        base = (iteration - self.start) * width
        return self.values[base : base + width]

    def group_values(self, iteration: int) -> list[dict[str, float]]:
        """The row of ``iteration`` as one ``{param: value}`` dict per param group."""
        row = self.row(iteration)
        width = len(self.params)
        return [
            dict(zip(self.params, row[g * width : (g + 1) * width], strict=True))
            for g in range(self.num_groups)
        ]


def decode_plan(message: scheduler_pb2.Plan, *, max_iters: int, growing: bool = False) -> Plan:
    """Copy a wire plan into a ``Plan`` and work out when to ask for the next one.

    A refill is wanted once ``refill_after(n)`` of the plan's iterations are used, unless
    the plan already reaches the job's last iteration (the plan's own ``max_iters``
    when the server sent one, else ``max_iters``: the values after training) or stops
    at a pending decision.
    """
    max_iters = message.max_iters or max_iters
    params = tuple(message.params)
    width = len(params) * message.num_groups
    n = message.num_iterations
    values = tuple(message.values)
    if n < 0 or len(values) != n * width:
        raise ParamschedError(
            f"malformed plan from the server: {n} iterations x {message.num_groups} groups x "
            f"{len(params)} params but {len(values)} values"
        )
    start = message.start_iteration
    stop = start + n
    waits = message.waits_for_epoch if message.HasField("waits_for_epoch") else None
    complete = waits is not None or stop > max_iters or n == 0
    refill_at = NEVER if complete else start + refill_after(n, growing)
    return Plan(start, n, values, params, message.num_groups, message.generation, waits,
                refill_at, max_iters)


def joined(held: Plan, start: int, new: Plan, growing: bool = False) -> Plan:
    """``held`` from iteration ``start`` on, continued by ``new``: the reply to a
    ``skip_held`` request, which starts where the rank's plan ends (or, after another
    plan was adopted meanwhile, inside it: values never change, so the overlap agrees).
    ``new`` has ``held``'s layout, or no values."""
    assert held.start <= start < new.start <= held.stop
    width = held.width
    values = held.values[(start - held.start) * width : (new.start - held.start) * width]
    n = new.stop - start
    refill_at = NEVER if new.refill_at == NEVER else start + refill_after(n, growing)
    return Plan(start, n, values + new.values, held.params, held.num_groups, new.generation,
                new.waits_for_epoch, refill_at, new.max_iters, held.writers)


#: a rate is measured over at least this long and this many iterations.
MIN_RATE_SECONDS = 0.001
MIN_RATE_ITERATIONS = 16


class PlanSizer:
    """How many iterations of plan to ask for: enough to last ``prefetch_seconds``.

    A plan is refilled once half of it is used, so the other half must outlast the
    refill's round trip. A slow loop is served by ``minimum``; a fast one (a small
    model, a benchmark) gets longer plans as its observed iteration rate demands, up
    to ``maximum`` and at most twice the current plan per refill (a plan twice as
    long takes the server about twice as long to compute). Running out of plan
    doubles the size at once.
    """

    def __init__(self, minimum: int, maximum: int, prefetch_seconds: float) -> None:
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
        self.prefetch_seconds = prefetch_seconds
        self.want = minimum
        self.rate: float | None = None  # iterations per second, once measured
        self._mark: tuple[float, int] | None = None

    @property
    def first(self) -> int:
        """The size of the refill asked for right after attach (and resume), before
        any rate is known: four attach-sized plans (a young plan: its own refill is
        asked on its first step, see ``refill_after``)."""
        return min(self.maximum, 4 * self.minimum)

    def grows_past(self, n: int) -> bool:
        """Whether the next plan asked for would be longer than ``n`` iterations (an
        unmeasured rate counts as fast: the first refill after attach is early)."""
        if self.rate is None:
            return self.maximum > n
        return min(int(self.rate * self.prefetch_seconds), self.maximum) > n

    def restart(self, iteration: int | None = None) -> None:
        """Start measuring the rate afresh (at attach and resume)."""
        self._mark = None if iteration is None else (time.monotonic(), iteration)
        self.rate = None

    def observe(self, iteration: int, current_plan: int) -> int:
        """Update the rate with the iteration count now; returns the size to ask for."""
        now = time.monotonic()
        mark = self._mark
        if mark is None or iteration < mark[1]:
            self._mark = (now, iteration)
            return self.want
        elapsed = now - mark[0]
        # Measured as soon as it means something: a fast loop must not run its first
        # plans at the minimum size (each of their refills would cost it a wait).
        if elapsed >= MIN_RATE_SECONDS and iteration - mark[1] >= MIN_RATE_ITERATIONS:
            rate = self.rate = (iteration - mark[1]) / elapsed
            grow = 2 * max(current_plan, self.minimum)
            wanted = min(int(rate * self.prefetch_seconds), grow, self.maximum)
            self.want = max(self.minimum, wanted)
            self._mark = (now, iteration)
        return self.want

    def outran(self) -> None:
        """The loop ran out of plan before the refill came: ask for more next time."""
        self.want = min(self.maximum, self.want * 2)
