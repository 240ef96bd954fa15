"""New jobs' first plans, by spec: a job created with a spec this process has already
computed starts from a copy of that computation instead of replaying it again.

A new job's first plan is a pure function of its spec (generation 1, no decisions,
no changes): ``Schedule(spec).values_range(0, n, {})``. ``attach`` computes it before
it stores the job (a spec whose arithmetic fails at some iteration is refused, and
nothing is stored) and keeps the schedule for the job's later plans. The schedule as
it is right after that computation is kept here, pickled (its replay states and its
value cache; the spec itself is not copied), so the next new job of the same spec gets
an identical schedule for the cost of one unpickle (tens of microseconds) instead of a
replay of ``n`` iterations: the same values, states and caches as if it had computed
them itself, and the same validation (the spec computed those ``n`` iterations once).
The values come from the copied value cache, as far as it holds them
(``Timeline.max_cached_cells``); a job with many groups x params replays its first plan
from the copied start state, as a fresh job would.

The copy kept may go further than the first plan (``extend``: in the background, once
a spec is attached again): the values of the first refill a rank asks for right after
attach (four attach-sized plans) are then in the new job's value cache from the start,
so that refill replays nothing either, as far as the timeline's value cache holds them.

Bounded: at most ``max_entries`` specs and ``max_bytes`` of pickles (least recently
used first out); a schedule bigger than ``max_entry_bytes`` is not kept at all.
"""

from __future__ import annotations

import io
import pickle
import threading
from collections import OrderedDict
from typing import Any

from ..schedules import JobSpec
from ..schedules.reschedule import Schedule
from ..schedules.timeline import Timeline

_SPEC = "spec"

#: the refill a client asks for right after attach, in attach-sized plans (the
#: client's ``PlanSizer.first``).
PRIMING_PLANS = 4


class _Pickler(pickle.Pickler):
    """Pickles a schedule with its spec left out (the copy gets the caller's spec)."""

    def __init__(self, file: io.BytesIO, spec: JobSpec) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._spec = spec

    def persistent_id(self, obj: Any) -> str | None:
        return _SPEC if obj is self._spec else None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, spec: JobSpec) -> None:
        super().__init__(file)
        self._spec = spec

    def persistent_load(self, pid: Any) -> Any:
        if pid != _SPEC:
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return self._spec


class FirstPlans:
    """Schedules of fresh jobs with their first ``n`` iterations computed, by spec hash.
    Thread-safe (computed in worker threads, read on the event loop)."""

    def __init__(self, *, max_entries: int = 256, max_bytes: int = 16 * 2**20,
                 max_entry_bytes: int = 2**20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self._lock = threading.Lock()
        self._kept: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._extending: set[str] = set()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, spec_hash: str, spec: JobSpec, n: int) -> Schedule | None:
        """A fresh schedule of ``spec`` (whose hash is ``spec_hash``) with at least its
        first ``n`` iterations computed, or None when none is kept."""
        with self._lock:
            kept = self._kept.get(spec_hash)
            if kept is None or kept[0] < n:
                return None
            self._kept.move_to_end(spec_hash)
        schedule = _Unpickler(io.BytesIO(kept[1]), spec).load()
        assert isinstance(schedule, Schedule)
        return schedule

    @staticmethod
    def ahead(spec: JobSpec, first: int) -> int:
        """How far a copy of ``spec``'s schedule goes: to the end of the refill a rank
        asks for right after attach (``PRIMING_PLANS`` attach-sized plans), within the
        job and as far as the timeline's value cache holds (or its first values would
        be out of the cache, and the attach's first plan would replay them)."""
        width = max(1, spec.num_groups * len(spec.params))
        return max(first, min(PRIMING_PLANS * first, spec.max_iters + 1,
                              Timeline.max_cached_cells // width))

    def computed(self, spec_hash: str) -> int:
        """How many first iterations the copy kept for ``spec_hash`` holds (0: none)."""
        with self._lock:
            kept = self._kept.get(spec_hash)
        return 0 if kept is None else kept[0]

    def compute(self, spec: JobSpec, spec_hash: str, n: int) -> Schedule:
        """A new schedule of ``spec`` with its first ``n`` iterations computed (raises
        ``ConfigError`` when they do not compute); a copy is kept for the next job."""
        schedule = Schedule(spec)
        schedule.values_range(0, n, {})
        self._keep(spec_hash, spec, n, schedule)
        return schedule

    def start_extending(self, spec_hash: str) -> bool:
        """Claim the extension of ``spec_hash``'s copy: False while one is under way (a
        claimed extension must then run: ``extend`` releases the claim)."""
        with self._lock:
            if spec_hash in self._extending:
                return False
            self._extending.add(spec_hash)
            return True

    def extend(self, spec_hash: str, spec: JobSpec, n: int) -> None:
        """Make the copy kept for ``spec_hash`` hold its first ``n`` iterations (from
        where it stops). Raises ``ConfigError`` when they do not compute: the copy then
        stays as it was."""
        failed = True
        try:
            have = self.computed(spec_hash)
            if 0 < have < n and (schedule := self.get(spec_hash, spec, have)) is not None:
                schedule.values_range(have, n, {})
                self._keep(spec_hash, spec, n, schedule)
            failed = False
        finally:
            with self._lock:  # a spec that failed stays claimed: it is not tried again
                if not failed:
                    self._extending.discard(spec_hash)
                elif len(self._extending) > 4 * self.max_entries:
                    self._extending.clear()

    def _keep(self, spec_hash: str, spec: JobSpec, n: int, schedule: Schedule) -> None:
        buffer = io.BytesIO()
        try:
            _Pickler(buffer, spec).dump(schedule)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError):
            return  # not kept: the next job computes it again
        blob = buffer.getvalue()
        if len(blob) > self.max_entry_bytes:
            return
        with self._lock:
            old = self._kept.pop(spec_hash, None)
            if old is not None:
                self.nbytes -= len(old[1])
                if old[0] > n:  # (a longer copy was kept meanwhile: keep that one)
                    n, blob = old
            self._kept[spec_hash] = (n, blob)
            self.nbytes += len(blob)
            while self._kept and (len(self._kept) > self.max_entries
                                  or self.nbytes > self.max_bytes):
                _, (_, dropped) = self._kept.popitem(last=False)
                self.nbytes -= len(dropped)
