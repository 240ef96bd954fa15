"""Random access to a job's values at any iteration, in bounded memory.

A ``Timeline`` never replays from 0 twice and never holds state that grows with the
job's age. It keeps a few replay states (copies of everything that changes while a
job trains) and answers a query at ``t`` from the latest one at or before ``t``:

* the initial state (iteration 0), always;
* keyframes: the states at the starts of the last few ``keyframe_interval`` slots up
  to a query that lands more than one interval past every known state, and seeded ones (``seed``: a
  keyframe the store or a checkpoint kept, so a cold server starts near the frontier);
  the least recently used are dropped beyond ``max_frames``;
* cursors: recent query start and end points, since ranks ask for consecutive,
  overlapping windows;
* a packed cache of the most recent values (``array('d')``, ``max_cached_cells``
  numbers), since every rank asks for the same window.

Replaying (instead of a closed form) keeps the curves bit-identical to MMEngine's
chainable arithmetic; a replay from any correct state equals the replay from 0.

Validation decisions (metrics per epoch) are inputs: states past an epoch end that
needed a decision were made with it, so a timeline refuses a later call that brings a
different decision for that epoch.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from .config import JobSpec
from .errors import DecisionPending, DecisionsChanged
from .float32 import F32
from .replay import Decisions, Metrics, Replayer, ReplayState

GroupValues = list[dict[str, float]]

#: About the memory of one stored state number (a float in a list, with its slot).
STATE_NUMBER_BYTES = 32


def same_decision(a: Metrics | None, b: Metrics | None) -> bool:
    """Equal decisions, where a NaN metric equals a NaN (a decision read again from the
    store is a new NaN object, and ``nan != nan``)."""
    if a is None or b is None:
        return a is b
    if a.keys() != b.keys():
        return False
    return all(x == y or (x != x and y != y) for x, y in ((a[k], b[k]) for k in a))


class Timeline:
    """The values of every scheduled param of every group at every iteration of a job."""

    max_frames = 8
    max_cursors = 4
    max_cached_cells = 1024  # 8 KiB of packed values: the plan every rank of a job asks for

    def __init__(self, spec: JobSpec, keyframe_interval: int = 512) -> None:
        if keyframe_interval < 1:
            raise ValueError("keyframe_interval must be >= 1")
        self.spec = spec
        self.replayer = Replayer(spec)
        self.interval = keyframe_interval
        self._initial = self.replayer.initial.copy()
        self._frames: OrderedDict[int, ReplayState] = OrderedDict()  # iteration -> state
        self._cursors: list[ReplayState] = []
        self._used: dict[int, Metrics | None] = {}
        # The packed value cache: iterations [_block_start, _block_start + rows).
        self._names = spec.params
        self._width = max(1, spec.num_groups * len(self._names))
        self._block_start = 0
        self._block = array("d")

    @property
    def last_iteration(self) -> int:
        """The last iteration with values: the one after training (MMEngine computes it)."""
        return self.spec.max_iters

    # -- the states kept ----------------------------------------------------------------
    def _best(self, t: int) -> ReplayState:
        """The latest kept state at or before ``t`` (not a copy)."""
        best = self._initial
        for frame in self._frames.values():
            if best.iteration < frame.iteration <= t:
                best = frame
        for cursor in self._cursors:
            if best.iteration < cursor.iteration <= t:
                best = cursor
        if best.iteration in self._frames:
            self._frames.move_to_end(best.iteration)
        return best

    def _keep_frame(self, state: ReplayState) -> None:
        self._frames[state.iteration] = state
        self._frames.move_to_end(state.iteration)
        while len(self._frames) > self.max_frames:
            self._frames.popitem(last=False)

    def _remember(self, state: ReplayState) -> None:
        """Keep a copy of ``state`` as a cursor, replacing the oldest of a few."""
        if state.iteration == 0 or any(c.iteration == state.iteration for c in self._cursors):
            return
        self._cursors.append(state.copy())
        if len(self._cursors) > self.max_cursors:
            self._cursors.pop(0)

    def is_cheap(self, t: int) -> bool:
        """Whether ``t`` is at most one keyframe interval from a kept state."""
        return self.replay_distance(t) <= self.interval

    def replay_distance(self, t: int) -> int:
        """Iterations a query at ``t`` replays before its first value."""
        rows = len(self._block) // self._width
        if self._block_start <= t < self._block_start + rows:
            return 0
        return self.state_distance(t)

    def state_distance(self, t: int) -> int:
        """Iterations ``state_at(t)`` replays (the value cache holds no states)."""
        return t - self._best(t).iteration

    def nbytes(self) -> int:
        """About the memory this timeline holds (packed cache and kept states)."""
        states = 1 + len(self._frames) + len(self._cursors)
        per_state = (self._width + 3 * len(self.spec.schedulers) + 8) * STATE_NUMBER_BYTES
        return len(self._block) * 8 + states * per_state

    def seed(self, state: ReplayState) -> None:
        """Keep a replay state made elsewhere (a stored keyframe; see ``check_state``)."""
        self._keep_frame(state.copy())

    def check_state(self, data: Mapping[str, Any]) -> ReplayState:
        """``data`` (``ReplayState.to_dict()``) as a state of this timeline, or ValueError."""
        initial = self._initial
        if not isinstance(data, Mapping) or set(data) - {"iteration", "values", "last_step",
                                                         "global_step", "plateau", "float32"}:
            raise ValueError("a replay state has the fields iteration, values, last_step, "
                             "global_step, plateau and float32")
        t = data.get("iteration")
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= self.last_iteration:
            raise ValueError(f"iteration must be in [0, {self.last_iteration}], got {t!r}")
        values, float32 = data.get("values"), data.get("float32") or {}
        if not isinstance(values, Mapping) or set(values) != set(initial.values):
            raise ValueError(f"values must hold {sorted(initial.values)}")
        for name, row in values.items():
            if not isinstance(row, list) or len(row) != len(initial.values[name]) or not all(
                    isinstance(x, int | float) and not isinstance(x, bool) for x in row):
                raise ValueError(f"values[{name!r}] must be one number per group")
        if not isinstance(float32, Mapping) or any(
                k not in values or not isinstance(v, list) or len(v) != len(values[k])
                or not all(isinstance(f, bool) for f in v) for k, v in float32.items()):
            raise ValueError("float32 must flag the values held as float32, per group")
        for name in ("last_step", "global_step"):
            steps = data.get(name)
            if not isinstance(steps, list) or len(steps) != len(getattr(initial, name)) or \
                    not all(isinstance(x, int) and not isinstance(x, bool) and x >= -1
                            for x in steps):
                raise ValueError(f"{name} must be one step count per scheduler")
        plateau = data.get("plateau")
        if not isinstance(plateau, Mapping) or {str(k) for k in plateau} != {
                str(k) for k in initial.plateau} or not all(
                isinstance(v, list) and len(v) == 3 and all(
                    isinstance(x, int | float) and not isinstance(x, bool) for x in v)
                for v in plateau.values()):
            raise ValueError("plateau must hold [best, bad epochs, cooldown] per "
                             "ReduceOnPlateau scheduler")
        state = ReplayState.from_dict(data)
        for name, row in state.values.items():  # (a forged int would compute apart)
            state.values[name] = [x if isinstance(x, F32) else float(x) for x in row]
        return state

    # -- decisions ----------------------------------------------------------------------
    def _check_range(self, t: int, name: str = "iteration") -> None:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= self.last_iteration:
            raise ValueError(f"{name} must be an integer in [0, {self.last_iteration}], got {t!r}")

    def _check_decisions(self, decisions: Decisions) -> None:
        for epoch, used in self._used.items():
            if epoch in decisions and not same_decision(decisions[epoch], used):
                raise DecisionsChanged(f"the decision for epoch {epoch} differs from the one "
                                 "these values were computed with")

    def _record(self, state: ReplayState, decisions: Decisions, start: int) -> None:
        if not self.replayer.plateau_idx:
            return
        spec = self.spec  # the validation points passed: epoch ends, or val_interval's
        for epoch in range(spec.decisions_done(start), spec.decisions_done(state.iteration)):
            if epoch in decisions and self.replayer.deciding_plateaus(epoch):
                self._used.setdefault(epoch, decisions[epoch])

    # -- queries ------------------------------------------------------------------------
    def state_at(self, t: int, decisions: Decisions | None = None) -> ReplayState:
        """The replay state in force while iteration ``t`` runs (a fresh copy)."""
        self._check_range(t)
        decisions = decisions or {}
        self._check_decisions(decisions)
        best = self._best(t)
        interval = self.interval
        slot = t - t % interval
        if slot - best.iteration >= interval:
            # Far from every kept state: on the way, keep the states at the last few
            # slot starts up to t's, so the next queries near t (or a little before it)
            # replay less than one interval.
            frame = best.copy()
            start = frame.iteration
            first = max(slot - (self.max_frames - 1) * interval,
                        (start // interval + 1) * interval)
            for boundary in range(first, slot + 1, interval):
                self.replayer.advance(frame, boundary, decisions)
                self._record(frame, decisions, start)
                start = frame.iteration
                self._keep_frame(frame.copy())
            best = frame
        state = best.copy()
        start = state.iteration
        self.replayer.advance(state, t, decisions)
        self._record(state, decisions, start)
        return state

    def values_at(self, t: int, decisions: Decisions | None = None) -> GroupValues:
        """The values per param group while iteration ``t`` runs."""
        return self.replayer.group_values(self.state_at(t, decisions))

    def values_range(
        self, start: int, stop: int, decisions: Decisions | None = None, *, partial: bool = False
    ) -> list[GroupValues]:
        """Values for iterations ``start .. stop-1`` (fresh lists and dicts).

        With ``partial=True`` the list ends early, before the first iteration whose
        values wait on a missing validation decision, instead of raising.
        """
        self._check_range(start, "start")
        self._check_range(stop - 1 if stop > start else start, "stop")
        decisions = decisions or {}
        self._check_decisions(decisions)
        out = self._cached(start, stop)
        first = start + len(out)
        if first >= stop:
            return out
        try:
            state = self.state_at(first, decisions)
        except DecisionPending:
            if partial:
                return out
            raise
        self._remember(state)
        fresh = [self.replayer.group_values(state)]
        for t in range(first + 1, stop):
            try:
                self.replayer.advance(state, t, decisions)
            except DecisionPending:
                if partial:
                    break
                raise
            fresh.append(self.replayer.group_values(state))
        self._record(state, decisions, first)
        self._remember(state)
        self._cache(first, fresh)
        return out + fresh

    def _cached(self, start: int, stop: int) -> list[GroupValues]:
        """The cached values of ``start ..`` (up to ``stop``), as far as they go."""
        width, names, groups = self._width, self._names, self.spec.num_groups
        rows = len(self._block) // width
        begin = start - self._block_start
        if not 0 <= begin < rows:
            return []
        block, params = self._block, len(names)
        out = []
        for row in range(begin, min(rows, begin + stop - start)):
            base = row * width
            out.append([{p: block[base + g * params + j] for j, p in enumerate(names)}
                        for g in range(groups)])
        return out

    def _cache(self, start: int, values: list[GroupValues]) -> None:
        """Append ``values`` (iterations from ``start``) to the packed cache, or start it
        again there when they do not continue it; keep the newest ``max_cached_cells``."""
        width = self._width
        rows = len(self._block) // width
        if start != self._block_start + rows:
            self._block = array("d")
            self._block_start = start
        names = self._names
        self._block.extend(row[g][p] for row in values for g in range(len(row)) for p in names)
        extra = len(self._block) // width - max(1, self.max_cached_cells // width)
        if extra > 0:
            del self._block[: extra * width]
            self._block_start += extra

    def needs_decision(self, epoch: int) -> bool:
        """Whether values after ``epoch``'s end depend on its validation metrics."""
        return bool(self.replayer.plateau_idx) and bool(self.replayer.deciding_plateaus(epoch))

    def check_metrics(self, epoch: int, metrics: Metrics | None) -> None:
        """Raise MetricsError if ``metrics`` lack what ``epoch``'s plateau check needs."""
        self.replayer.check_metrics(epoch, metrics)
