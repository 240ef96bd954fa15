"""Values as curves: the engine run locally (``plot CONFIG``), a progress bar."""

from __future__ import annotations

import sys
from typing import TextIO

from paramsched.client.results import Values
from paramsched.server.schedules import Decisions, JobSpec, Timeline

from .common import ENGINE_CHUNK, PROGRESS_MIN_ITERATIONS


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


#: about how many points a plot of a long job or config draws (one every ``plot_stride``)
PLOT_POINTS = 2000


def plot_stride(iterations: int) -> int:
    """The stride that draws ``iterations`` in about ``PLOT_POINTS`` points: a plot of a
    10^7-iteration job reads 2,000 values per param and group, not 10^7."""
    return max(1, -(-iterations // PLOT_POINTS))


def simulate(spec: JobSpec, progress: ProgressBar | None = None, *, stride: int = 1) -> Values:
    """A spec's values for iterations 0..max_iters (every ``stride``-th one), computed
    locally in chunks; only the kept rows are held.

    ReduceOnPlateau depends on validation metrics nobody has here: every epoch is
    simulated as "no validation ran", so those schedulers hold their value.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    decisions: Decisions = {}
    if any(s.is_plateau for s in spec.schedulers) and spec.max_epochs:
        decisions = {epoch: None for epoch in range(spec.max_epochs)}
    timeline = Timeline(spec)
    rows: list[tuple[dict[str, float], ...]] = []
    total = spec.max_iters + 1
    # Chunks start on the stride's grid, so every kept row is iteration k * stride.
    chunk = max(stride, ENGINE_CHUNK - ENGINE_CHUNK % stride)
    for start in range(0, total, chunk):
        stop = min(total, start + chunk)
        got = timeline.values_range(start, stop, decisions, partial=True)
        rows.extend(tuple(dict(g) for g in row) for row in got[::stride])
        if progress is not None:
            progress.update(start + len(got))
        if len(got) < stop - start:
            break
    if progress is not None:
        progress.close()
    return Values(0, tuple(spec.params), spec.num_groups, tuple(rows), max_iters=spec.max_iters,
                  stride=stride)
