"""Random access to a job's values at any iteration, without replaying from 0.

A ``Timeline`` keeps keyframes (copies of the replay state) every
``keyframe_interval`` iterations. A query at ``t`` starts from the keyframe at or
before ``t`` and replays at most ``keyframe_interval - 1`` iterations; keyframes past
the last one are made on demand, once. Replaying (instead of a closed form) keeps the
curves bit-identical to MMEngine's chainable arithmetic.

Validation decisions (metrics per epoch) are inputs: keyframes past an epoch end that
needed a decision were made with it, so a timeline refuses a later call that brings a
different decision for that epoch.
"""

from __future__ import annotations

from .config import JobSpec
from .errors import DecisionPending
from .replay import Decisions, Metrics, Replayer, ReplayState

GroupValues = list[dict[str, float]]


class Timeline:
    """The values of every scheduled param of every group at every iteration of a job."""

    def __init__(self, spec: JobSpec, keyframe_interval: int = 512) -> None:
        if keyframe_interval < 1:
            raise ValueError("keyframe_interval must be >= 1")
        self.spec = spec
        self.replayer = Replayer(spec)
        self.interval = keyframe_interval
        self._keyframes: list[ReplayState] = [self.replayer.initial.copy()]
        self._used: dict[int, Metrics | None] = {}

    @property
    def last_iteration(self) -> int:
        """The last iteration with values: the one after training (MMEngine computes it)."""
        return self.spec.max_iters

    def _check_range(self, t: int, name: str = "iteration") -> None:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= self.last_iteration:
            raise ValueError(f"{name} must be an integer in [0, {self.last_iteration}], got {t!r}")

    def _check_decisions(self, decisions: Decisions) -> None:
        for epoch, used in self._used.items():
            if epoch in decisions and decisions[epoch] != used:
                raise ValueError(f"the decision for epoch {epoch} differs from the one "
                                 "these values were computed with")

    def _record(self, state: ReplayState, decisions: Decisions, start: int) -> None:
        length = self.spec.epoch_length
        if not self.replayer.plateau_idx or not self.spec.epoch_based or not length:
            return
        for epoch in range(start // length, state.iteration // length):
            if epoch in decisions and self.replayer.active_plateaus(epoch):
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
        state = self._keyframes[slot].copy()
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
        """Values for iterations ``start .. stop-1``.

        With ``partial=True`` the list ends early, before the first iteration whose
        values wait on a missing validation decision, instead of raising.
        """
        self._check_range(start, "start")
        self._check_range(stop - 1 if stop > start else start, "stop")
        decisions = decisions or {}
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
        return out

    def needs_decision(self, epoch: int) -> bool:
        """Whether values after ``epoch``'s end depend on its validation metrics."""
        return bool(self.replayer.plateau_idx) and bool(self.replayer.active_plateaus(epoch))

    def check_metrics(self, epoch: int, metrics: Metrics | None) -> None:
        """Raise MetricsError if ``metrics`` lack what ``epoch``'s plateau check needs."""
        self.replayer.check_metrics(epoch, metrics)
