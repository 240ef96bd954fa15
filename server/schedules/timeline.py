"""Random access to a job's values at any iteration, without replaying from 0.

A ``Timeline`` keeps keyframes (copies of the replay state) every
``keyframe_interval`` iterations. A query at ``t`` starts from the keyframe at or
before ``t`` and replays at most ``keyframe_interval - 1`` iterations; keyframes past
the last one are made on demand, once. A few recent query end points (cursors) are
kept too, since ranks ask for consecutive iterations: the next query usually
continues where the last one stopped; and the values of recently asked iterations
are kept, since every rank asks for the same ones. Replaying (instead of a closed form) keeps the
curves bit-identical to MMEngine's chainable arithmetic.

Validation decisions (metrics per epoch) are inputs: keyframes past an epoch end that
needed a decision were made with it, so a timeline refuses a later call that brings a
different decision for that epoch.
"""

from __future__ import annotations

from collections import OrderedDict

from .config import JobSpec
from .errors import DecisionPending, DecisionsChanged
from .replay import Decisions, Metrics, Replayer, ReplayState

GroupValues = list[dict[str, float]]


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

    max_cursors = 8
    max_cached_values = 4096  # about one max-size plan: what ranks ask again

    def __init__(self, spec: JobSpec, keyframe_interval: int = 512) -> None:
        if keyframe_interval < 1:
            raise ValueError("keyframe_interval must be >= 1")
        self.spec = spec
        self.replayer = Replayer(spec)
        self.interval = keyframe_interval
        self._keyframes: list[ReplayState] = [self.replayer.initial.copy()]
        self._cursors: list[ReplayState] = []
        # iteration -> values; valid forever, since decisions are written once.
        self._values: OrderedDict[int, GroupValues] = OrderedDict()
        self._used: dict[int, Metrics | None] = {}

    @property
    def last_iteration(self) -> int:
        """The last iteration with values: the one after training (MMEngine computes it)."""
        return self.spec.max_iters

    def is_cheap(self, t: int) -> bool:
        """Whether ``t`` is at most one keyframe interval from state already made."""
        return t // self.interval < len(self._keyframes) or t in self._values

    def _check_range(self, t: int, name: str = "iteration") -> None:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= self.last_iteration:
            raise ValueError(f"{name} must be an integer in [0, {self.last_iteration}], got {t!r}")

    def _check_decisions(self, decisions: Decisions) -> None:
        for epoch, used in self._used.items():
            if epoch in decisions and not same_decision(decisions[epoch], used):
                raise DecisionsChanged(f"the decision for epoch {epoch} differs from the one "
                                 "these values were computed with")

    def _record(self, state: ReplayState, decisions: Decisions, start: int) -> None:
        length = self.spec.epoch_length
        if not self.replayer.plateau_idx or not self.spec.epoch_based or not length:
            return
        for epoch in range(start // length, state.iteration // length):
            if epoch in decisions and self.replayer.deciding_plateaus(epoch):
                self._used.setdefault(epoch, decisions[epoch])

    def state_at(self, t: int, decisions: Decisions | None = None) -> ReplayState:
        """The replay state in force while iteration ``t`` runs (a fresh copy)."""
        self._check_range(t)
        decisions = decisions or {}
        self._check_decisions(decisions)
        slot = t // self.interval
        while len(self._keyframes) <= slot:
            frame = self._keyframes[-1].copy()
            start = frame.iteration
            self.replayer.advance(frame, start + self.interval, decisions)
            self._record(frame, decisions, start)
            self._keyframes.append(frame)
        best = self._keyframes[slot]
        for cursor in self._cursors:
            if best.iteration < cursor.iteration <= t:
                best = cursor
        state = best.copy()
        start = state.iteration
        self.replayer.advance(state, t, decisions)
        self._record(state, decisions, start)
        return state

    def _remember(self, state: ReplayState) -> None:
        """Keep ``state`` as a cursor (a copy), replacing the oldest of a few."""
        if state.iteration % self.interval:
            self._cursors.append(state.copy())
            if len(self._cursors) > self.max_cursors:
                self._cursors.pop(0)

    def values_at(self, t: int, decisions: Decisions | None = None) -> GroupValues:
        """The values per param group while iteration ``t`` runs."""
        return self.replayer.group_values(self.state_at(t, decisions))

    def values_range(
        self, start: int, stop: int, decisions: Decisions | None = None, *, partial: bool = False
    ) -> list[GroupValues]:
        """Values for iterations ``start .. stop-1``.

        The returned values are shared with the cache: treat them as read-only.
        With ``partial=True`` the list ends early, before the first iteration whose
        values wait on a missing validation decision, instead of raising.
        """
        self._check_range(start, "start")
        self._check_range(stop - 1 if stop > start else start, "stop")
        decisions = decisions or {}
        self._check_decisions(decisions)
        cached = self._cached_prefix(start, stop)
        if len(cached) == stop - start:
            return cached
        try:
            state = self.state_at(start, decisions)
        except DecisionPending:
            if partial:
                return []
            raise
        out = [self.replayer.group_values(state)]
        for t in range(start + 1, stop):
            try:
                self.replayer.advance(state, t, decisions)
            except DecisionPending:
                if partial:
                    break
                raise
            out.append(self.replayer.group_values(state))
        self._record(state, decisions, start)
        self._remember(state)
        self._cache(start, out)
        return out

    def _cached_prefix(self, start: int, stop: int) -> list[GroupValues]:
        out = []
        for t in range(start, stop):
            values = self._values.get(t)
            if values is None:
                break
            out.append(values)
        return out

    def _cache(self, start: int, values: list[GroupValues]) -> None:
        cache = self._values
        for offset, v in enumerate(values):
            cache[start + offset] = v
            cache.move_to_end(start + offset)
        while len(cache) > self.max_cached_values:
            cache.popitem(last=False)

    def needs_decision(self, epoch: int) -> bool:
        """Whether values after ``epoch``'s end depend on its validation metrics."""
        return bool(self.replayer.plateau_idx) and bool(self.replayer.deciding_plateaus(epoch))

    def check_metrics(self, epoch: int, metrics: Metrics | None) -> None:
        """Raise MetricsError if ``metrics`` lack what ``epoch``'s plateau check needs."""
        self.replayer.check_metrics(epoch, metrics)
