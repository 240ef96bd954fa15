"""Plans shared by a job's ranks: the ranks of a job report the same iterations and ask
for the same plan, so the plan computed for the first of them is handed to the others.

A plan handed to a rank is a pure function of what its key holds: the job (incarnation,
generation, spec, number of changes), the decisions recorded (they only accumulate
within a generation, first writer wins, so their number says which are known) and the
iterations ``[start, stop)``. The same key gives the same values, bit for bit, so a
plan found here is the one that computing it again would give; the caller must not
change it (its transport may keep its encoding by the plan's identity).

Bounded: at most ``max_entries`` plans holding ``max_cells`` values in all (least
recently used first out); a plan bigger than a quarter of that is not kept.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeAlias

from .views import Plan

# (job id, incarnation, generation, spec hash, changes, decisions, start, stop)
Key: TypeAlias = tuple[str, str, int, str, int, int, int, int]


class SharedPlans:
    def __init__(self, *, max_entries: int = 64, max_cells: int = 16384) -> None:
        self.max_entries = max_entries
        self.max_cells = max_cells
        self.cells = 0
        self._kept: OrderedDict[Key, Plan] = OrderedDict()

    def get(self, key: Key) -> Plan | None:
        plan = self._kept.get(key)
        if plan is not None:
            self._kept.move_to_end(key)
        return plan

    def put(self, key: Key, plan: Plan) -> None:
        cells = plan.cells
        if cells * 4 > self.max_cells or key in self._kept:
            return
        self._kept[key] = plan
        self.cells += cells
        while len(self._kept) > self.max_entries or self.cells > self.max_cells:
            _, dropped = self._kept.popitem(last=False)
            self.cells -= dropped.cells
