"""Live changes to a job's schedule: one mechanism, reschedule from iteration s.

A change (``Change``: parsed and validated once, frozen; its stored form is a plain
dict, the same word in the proto, the store and checkpoints) takes effect at iteration
``s`` (``from_iteration``) for some params of some param groups, in one of three modes:

* ``replace``: a new list of MMEngine scheduler configs replaces the remaining schedule.
  Its ``begin``/``end`` count from s (iteration 0 of the change is s; epochs are
  ``epoch_length`` iterations counted from s) and it starts from the values in force
  at s, or from ``start_values``. No configs means hold (or set, with start values).
* ``multiply``: the configs shape a factor (starting at 1.0, or ``start_values``) that
  multiplies the current curve: scaling keeps the curve's shape, a re-warm ramps the
  factor from a fraction back to 1.
* ``stretch``: the remaining curve from s is resampled onto a new length
  (``max_iters``), keeping the value at s and the final value: extend or shorten
  training.

A job's values are its base timeline with every change applied in order; each change
reads the values the earlier ones produce. Values are still a pure function of the
job's record, and a change never touches an iteration before its s.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import JobSpec, build_job_spec
from .errors import ConfigError, DecisionPending
from .replay import Decisions, ReplayState
from .timeline import GroupValues, Timeline

MODES = ("replace", "multiply", "stretch")


def _fail(reason: str, field: str) -> ConfigError:
    return ConfigError(reason, field=field)


@dataclass(frozen=True)
class Change:
    """One validated change, with the timeline of its configs (``replace``/``multiply``)."""

    start: int
    mode: str
    params: tuple[str, ...]
    groups: tuple[int, ...]
    max_iters: int
    data: dict[str, Any]
    timeline: Timeline | None
    initial: tuple[dict[str, float], ...] = ()  # per group: the change's values at s


class Layer(ABC):
    """Values of a job up to and including some changes (the base layer has none)."""

    max_iters: int
    params: tuple[str, ...]
    num_groups: int

    @abstractmethod
    def values_range(self, start: int, stop: int, decisions: Decisions) -> list[GroupValues]:
        """Values for [start, stop); shorter when a decision is pending (never raises)."""



class BaseLayer(Layer):
    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.max_iters = timeline.spec.max_iters
        self.params = timeline.spec.params
        self.num_groups = timeline.spec.num_groups

    def values_range(self, start: int, stop: int, decisions: Decisions) -> list[GroupValues]:
        stop = min(stop, self.max_iters + 1)
        if start >= stop:
            return []
        return self.timeline.values_range(start, stop, decisions, partial=True)


class ChangeLayer(Layer):
    def __init__(self, below: Layer, change: Change,
                 constants: list[dict[str, float]]) -> None:
        self.below = below
        self.change = change
        self.constants = constants
        self.max_iters = change.max_iters
        self.params = tuple(dict.fromkeys(below.params + change.params))
        self.num_groups = below.num_groups

    def values_range(self, start: int, stop: int, decisions: Decisions) -> list[GroupValues]:
        stop = min(stop, self.max_iters + 1)
        if start >= stop:
            return []
        o = self.change
        s = o.start
        under = (self._stretched(start, stop, decisions) if o.mode == "stretch"
                 else self._below(start, stop, decisions))
        out = [self._complete(row) for row in under[: max(0, s - start)]]
        if len(under) < stop - start or stop <= s:
            return out if stop <= s else out + self._apply(under, start, len(under), decisions)
        return out + self._apply(under, start, stop - start, decisions)

    def _apply(self, under: list[GroupValues], start: int, count: int,
               decisions: Decisions) -> list[GroupValues]:
        """Rows ``max(start, s) .. start+count-1`` with this change applied."""
        o = self.change
        first = max(start, o.start)
        stop = start + count
        if first >= stop:
            return []
        if o.mode == "stretch":
            mine: list[GroupValues] = under[first - start:stop - start]
        else:
            assert o.timeline is not None
            mine = o.timeline.values_range(first - o.start, stop - o.start, decisions,
                                           partial=True)
        out = []
        for offset, step in enumerate(mine):
            row = self._complete(under[first - start + offset])
            for g in o.groups:
                for p in o.params:
                    value = step[g][p] if p in step[g] else o.initial[g][p]
                    row[g][p] = row[g][p] * value if o.mode == "multiply" else value
            out.append(row)
        return out

    def _complete(self, row: GroupValues) -> GroupValues:
        """A copy of ``row`` with every param of this layer (new ones at their constant
        initial value, which nothing below changed)."""
        out = []
        for g, values in enumerate(row):
            merged = dict(values)
            for p in self.change.params:
                merged.setdefault(p, self.constants[g][p])
            out.append(merged)
        return out

    def _below(self, start: int, stop: int, decisions: Decisions) -> list[GroupValues]:
        """The layer below; past its end (an extended job) its last values are held."""
        below_end = self.below.max_iters + 1
        got = self.below.values_range(start, min(stop, below_end), decisions)
        if stop <= below_end or len(got) < max(0, min(stop, below_end) - start):
            return got
        if got:
            last = got[-1]
        else:
            tail = self.below.values_range(below_end - 1, below_end, decisions)
            if not tail:
                return got
            last = tail[0]
        return got + [last] * (stop - max(start, below_end))

    def _stretched(self, start: int, stop: int, decisions: Decisions) -> list[GroupValues]:
        """The layer below resampled onto this layer's length from s on."""
        s = self.change.start
        old_rest = self.below.max_iters - s
        new_rest = self.max_iters - s
        out: list[GroupValues] = []
        if start < s:
            out = self.below.values_range(start, min(stop, s), decisions)
            if len(out) < min(stop, s) - start:
                return out
        for t in range(max(start, s), stop):
            source = s + (t - s) * old_rest // new_rest if new_rest else s
            got = self.below.values_range(source, source + 1, decisions)
            if not got:
                break
            out.append(got[0])
        return out


class Schedule:
    """A job's values: its base timeline plus every change, in order."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.base = Timeline(spec)
        self.top: Layer = BaseLayer(self.base)
        self.changes: list[Change] = []

    @classmethod
    def from_changes(cls, spec: JobSpec, changes: Sequence[Mapping[str, Any]],
                     decisions: Decisions, *, where: str = "changes") -> Schedule:
        """A job's schedule: its spec with its stored changes, in order (raises
        ConfigError naming ``where[i]``). The one builder the service, checkpoint
        loading and listings use, so they agree on a job's length and params."""
        schedule = cls(spec)
        for i, data in enumerate(changes):
            schedule.add(build_change(schedule, data, decisions=decisions,
                                        where=f"{where}[{i}]"))
        return schedule

    @property
    def max_iters(self) -> int:
        return self.top.max_iters

    @property
    def params(self) -> tuple[str, ...]:
        return self.top.params

    def add(self, change: Change) -> None:
        self.changes.append(change)
        self.top = ChangeLayer(self.top, change, _available_params(self.spec))

    def values_range(self, start: int, stop: int, decisions: Decisions) -> list[GroupValues]:
        """Values for [start, stop) clipped to the job's end; shorter at a pending decision."""
        return self.top.values_range(start, stop, decisions)

    def values_at(self, t: int, decisions: Decisions) -> GroupValues:
        got = self.top.values_range(t, t + 1, decisions)
        if not got:
            length = self.spec.epoch_length or 1
            raise DecisionPending(t // length - 1, t)
        return got[0]

    def is_cheap(self, t: int) -> bool:
        """Whether the values at ``t`` need at most a short replay in every timeline."""
        timelines = self.timelines()
        return all(timelines[k].is_cheap(pos)  # type: ignore[union-attr]
                   for k, pos in self.positions(t).items())

    # -- keyframes: the replay states of every timeline, for another server to continue
    def timelines(self) -> list[Timeline | None]:
        """The base timeline, then each change's (None for a stretch, which has none)."""
        return [self.base] + [o.timeline for o in self.changes]

    def positions(self, t: int) -> dict[int, int]:
        """Which iteration of which timeline (index into ``timelines()``) the values at
        ``t`` are read from: each change reads its own timeline from its start, a
        stretch resamples the layers below, and a layer past its end holds its last
        values (see ``ChangeLayer``)."""
        out: dict[int, int] = {}
        x = min(t, self.max_iters)
        for k in range(len(self.changes) - 1, -1, -1):
            o = self.changes[k]
            below_max = self.changes[k - 1].max_iters if k else self.spec.max_iters
            x = min(x, o.max_iters)
            if x >= o.start:
                if o.timeline is not None:
                    out[k + 1] = min(x - o.start, o.timeline.last_iteration)
                if o.mode == "stretch":
                    old_rest, new_rest = below_max - o.start, o.max_iters - o.start
                    x = o.start + (x - o.start) * old_rest // new_rest if new_rest else o.start
            x = min(x, below_max)
        out[0] = min(x, self.spec.max_iters)
        return out

    def keyframe(self, t: int, decisions: Decisions, *,
                 since: int | None = None) -> dict[str, Any] | None:
        """The replay states the values at ``t`` continue from, as plain data; None when
        they wait on a validation decision. Cheap right after the values at ``t`` were
        computed (the states are kept as cursors). ``since``: an earlier iteration whose
        states the keyframe holds too (``"since"``), so a server seeded with it answers
        from there on as well (a plan's start: ranks still run, report and checkpoint
        inside the plan they hold, below its end)."""
        states = self._states(t, decisions)
        if states is None:
            return None
        keyframe: dict[str, Any] = {"iteration": t, "states": states}
        if since is not None and 0 < since < t:
            earlier = self._states(since, decisions)
            if earlier is not None:
                keyframe["since"] = {"iteration": since, "states": earlier}
        return keyframe

    def _states(self, t: int, decisions: Decisions) -> dict[str, Any] | None:
        timelines = self.timelines()
        states: dict[str, Any] = {}
        try:
            for k, pos in self.positions(t).items():
                timeline = timelines[k]
                assert timeline is not None
                states[str(k)] = timeline.state_at(pos, decisions if k == 0 else {}).to_dict()
        except DecisionPending:
            return None
        return states

    def seed(self, keyframe: Mapping[str, Any]) -> int:
        """Keep a keyframe's states (``keyframe()``'s data, from the store or a
        checkpoint) in the timelines they belong to. Raises ValueError, keeping
        nothing, when it does not fit this schedule. Returns its iteration."""
        if not isinstance(keyframe, Mapping) or set(keyframe) - {"since"} != {
                "iteration", "states"}:
            raise ValueError("a keyframe has the fields iteration and states (and since)")
        checked = self._checked(keyframe["iteration"], keyframe["states"])
        t = keyframe["iteration"]
        if "since" in keyframe:
            since = keyframe["since"]
            if not isinstance(since, Mapping) or set(since) != {"iteration", "states"}:
                raise ValueError("a keyframe's since has the fields iteration and states")
            if isinstance(since["iteration"], int) and not 0 < since["iteration"] < t:
                raise ValueError(f"a keyframe's since iteration must be in [1, {t}), got "
                                 f"{since['iteration']!r}")
            checked += self._checked(since["iteration"], since["states"])
        for timeline, state in checked:
            timeline.seed(state)
        return int(t)

    def _checked(self, t: Any, states: Any) -> list[tuple[Timeline, ReplayState]]:
        """The states of a keyframe at ``t``, checked against this schedule's timelines."""
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= self.max_iters:
            raise ValueError(f"keyframe iteration must be in [0, {self.max_iters}], got {t!r}")
        expected = self.positions(t)
        if not isinstance(states, Mapping) or set(states) != {str(k) for k in expected}:
            raise ValueError(f"a keyframe at iteration {t} holds the states of timelines "
                             f"{sorted(expected)}")
        timelines = self.timelines()
        checked = []
        for k, pos in expected.items():
            timeline = timelines[k]
            assert timeline is not None
            state = timeline.check_state(states[str(k)])
            if state.iteration != pos:
                raise ValueError(f"keyframe state {k} is at iteration {state.iteration}, "
                                 f"not {pos}")
            checked.append((timeline, state))
        return checked

    def state_distance(self, t: int) -> int:
        """The most iterations any timeline replays to reach the replay states at ``t``."""
        timelines = self.timelines()
        return max(timelines[k].state_distance(pos)  # type: ignore[union-attr]
                   for k, pos in self.positions(t).items())

    def replay_distance(self, t: int) -> int:
        """The most iterations any timeline replays to reach the values at ``t``."""
        timelines = self.timelines()
        return max(timelines[k].replay_distance(pos)  # type: ignore[union-attr]
                   for k, pos in self.positions(t).items())

    def nbytes(self) -> int:
        """About the memory the schedule's timelines hold."""
        return sum(t.nbytes() for t in self.timelines() if t is not None)

    def needs_decision(self, epoch: int) -> bool:
        return self.base.needs_decision(epoch)

    def check_metrics(self, epoch: int, metrics: Any) -> None:
        self.base.check_metrics(epoch, metrics)


def resolved(schedule: Schedule, data: Mapping[str, Any], decisions: Decisions) -> dict[str, Any]:
    """``data`` with the values in force at its ``from_iteration`` written in, as stored."""
    out = dict(data)
    if out.get("mode", "replace") == "replace" and "resolved" not in out:
        out["resolved"] = schedule.values_at(int(out["from_iteration"]), decisions)
    return out


def build_change(
    schedule: Schedule, data: Mapping[str, Any], *, decisions: Decisions, where: str = "change"
) -> Change:
    """Validate a change against a job's current schedule (raises ConfigError)."""
    spec = schedule.spec
    known = ("from_iteration", "mode", "param_scheduler", "params", "groups", "start_values",
             "max_iters", "resolved")
    for key in data:
        if key not in known:
            raise _fail(f"unknown field (known: {', '.join(known)})", f"{where}.{key}")
    s = data.get("from_iteration")
    if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= schedule.max_iters:
        raise _fail(f"must be an iteration in [0, {schedule.max_iters}], got {s!r}",
                    f"{where}.from_iteration")
    if schedule.changes and s < schedule.changes[-1].start:
        raise _fail(f"must not be before the previous change's iteration "
                    f"{schedule.changes[-1].start}", f"{where}.from_iteration")
    mode = data.get("mode", "replace")
    if mode not in MODES:
        raise _fail(f"must be one of {', '.join(MODES)}, got {mode!r}", f"{where}.mode")
    max_iters = data.get("max_iters")
    if max_iters is not None and (isinstance(max_iters, bool) or not isinstance(max_iters, int)
                                  or max_iters <= s):
        raise _fail(f"must be an integer after from_iteration ({s}), got {max_iters!r}",
                    f"{where}.max_iters")
    new_max = max_iters if max_iters is not None else schedule.max_iters
    groups = _groups(data.get("groups"), spec.num_groups, f"{where}.groups")
    start_values = data.get("start_values") or {}
    if not isinstance(start_values, Mapping):
        raise _fail("must be an object of param -> value", f"{where}.start_values")
    for name, value in start_values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise _fail(f"must be a finite number, got {value!r}", f"{where}.start_values.{name}")
    configs = data.get("param_scheduler") or []
    if mode == "stretch":
        if max_iters is None:
            raise _fail("a stretch needs the new max_iters", f"{where}.max_iters")
        if configs or start_values:
            raise _fail("a stretch takes no configs or start values", f"{where}.mode")
        params = _params(data.get("params"), schedule.params, schedule.params, where)
        return Change(s, mode, params, groups, new_max, dict(data), None)
    if max_iters is not None and max_iters > schedule.max_iters and mode != "replace":
        raise _fail("extending a job needs mode 'replace' or 'stretch'", f"{where}.mode")
    available = _available_params(spec)
    # The sub-job: starts from the values in force at s (replace) or a factor of 1.0.
    # A stored change carries those values ("resolved"), so rebuilding it later (a
    # resumed job whose decisions before s are not known yet) needs no replay.
    current = data.get("resolved")
    if current is None:
        try:
            current = schedule.values_at(s, decisions)
        except DecisionPending as exc:
            raise _fail(f"the values at iteration {s} wait for a validation decision; "
                        f"change from a later iteration ({exc})",
                        f"{where}.from_iteration") from None
    elif not (isinstance(current, list) and len(current) == spec.num_groups and all(
            isinstance(g, Mapping) and all(p in g for p in schedule.params) for g in current)):
        raise _fail("must hold the values of every scheduled param per group",
                    f"{where}.resolved")
    initial = []
    for g in range(spec.num_groups):
        values = {p: (1.0 if mode == "multiply" else v) for p, v in available[g].items()}
        for p in schedule.params:
            values[p] = 1.0 if mode == "multiply" else current[g][p]
        for name, value in start_values.items():
            if name not in values:
                raise _fail(f"unknown param {name!r} (the groups have {sorted(values)})",
                            f"{where}.start_values.{name}")
            values[name] = value
        initial.append(values)
    remaining = new_max - s
    length = spec.epoch_length
    try:
        sub = build_job_spec(
            configs, initial, epoch_length=length,
            max_epochs=-(-remaining // length) if spec.epoch_based and length else None,
            max_iters=None if spec.epoch_based and length else remaining,
            semantics=spec.semantics)  # a change computes with its job's version
    except ConfigError as exc:
        raise ConfigError(exc.reason, field=exc.field.removeprefix(f"param_scheduler[{exc.index}].")
                          if exc.index is not None else exc.field,
                          index=exc.index, scheduler_type=exc.scheduler_type) from None
    if any(x.is_plateau for x in sub.schedulers):
        raise _fail("ReduceOnPlateau cannot be used in a change", f"{where}.param_scheduler")
    default = tuple(dict.fromkeys(sub.params + tuple(start_values)))
    if max_iters is not None:
        default = tuple(dict.fromkeys(schedule.params + default))
    params = _params(data.get("params"), default, tuple(available[0]), where)
    if not params:
        raise _fail("nothing to change: give configs, start_values or params",
                    f"{where}.param_scheduler")
    missing = [p for p in params if p not in sub.params and p not in start_values
               and mode == "multiply"]
    if missing:
        raise _fail(f"{missing} have no factor configs or start values", f"{where}.params")
    return Change(s, mode, params, groups, new_max, dict(data), Timeline(sub), tuple(initial))


def _available_params(spec: JobSpec) -> list[dict[str, float]]:
    """The numeric values a change may schedule, per group (momentum from betas[0])."""
    out = []
    for group in spec.initial_values:
        values = {k: v for k, v in group.items() if k != "betas"}
        if "betas" in group and "momentum" not in values:
            values["momentum"] = group["betas"][0]
        out.append(values)
    return out


def _groups(raw: Any, num_groups: int, field: str) -> tuple[int, ...]:
    if raw is None or raw == []:
        return tuple(range(num_groups))
    if not isinstance(raw, list) or not all(
            isinstance(g, int) and not isinstance(g, bool) and 0 <= g < num_groups for g in raw):
        raise _fail(f"must be a list of group indices in [0, {num_groups - 1}], got {raw!r}", field)
    return tuple(sorted(set(raw)))


def _params(raw: Any, default: tuple[str, ...], allowed: tuple[str, ...],
            where: str) -> tuple[str, ...]:
    if raw is None or raw == []:
        return default
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise _fail("must be a list of param names", f"{where}.params")
    unknown = [p for p in raw if p not in allowed]
    if unknown:
        raise _fail(f"unknown params {unknown} (the groups have {sorted(allowed)})",
                    f"{where}.params")
    return tuple(dict.fromkeys(raw))
