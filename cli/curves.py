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


def simulate(spec: JobSpec, progress: ProgressBar | None = None) -> Values:
    """A spec's values for iterations 0..max_iters, computed locally in chunks.

    ReduceOnPlateau depends on validation metrics nobody has here: every epoch is
    simulated as "no validation ran", so those schedulers hold their value.
    """
    decisions: Decisions = {}
    if any(s.is_plateau for s in spec.schedulers) and spec.max_epochs:
        decisions = {epoch: None for epoch in range(spec.max_epochs)}
    timeline = Timeline(spec)
    rows: list[tuple[dict[str, float], ...]] = []
    total = spec.max_iters + 1
    for start in range(0, total, ENGINE_CHUNK):
        stop = min(total, start + ENGINE_CHUNK)
        rows.extend(tuple(dict(g) for g in row)
                    for row in timeline.values_range(start, stop, decisions, partial=True))
        if progress is not None:
            progress.update(len(rows))
        if len(rows) < stop:
            break
    if progress is not None:
        progress.close()
    return Values(0, tuple(spec.params), spec.num_groups, tuple(rows), max_iters=spec.max_iters)
