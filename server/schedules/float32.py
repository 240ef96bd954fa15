"""A param group value held as a float32 tensor (``lr=torch.tensor(1e-3)``).

MMEngine's schedulers chain their arithmetic on whatever the param group holds. For a
0-dim float32 tensor torch computes every operation in float32: a Python number on the
other side is first cast to float32, and the result is rounded to float32. ``F32`` is a
``float`` that does the same: ``F32 op x`` and ``x op F32`` give
``F32(round32(round32(a) op round32(b)))``. Doing the operation in double and rounding
once is exact for ``+ - * /`` (double has more than twice float32's precision), so the
result is bit-identical to torch's. Comparisons also compare in float32, as torch does.

``float(v)`` gives a plain float, and a plain result (what ``float(group['lr']) * factor``
in ReduceOnPlateau or OneCycle's plain-float phases write into the group) stays a plain
float from then on, as the tensor is replaced by a Python float in MMEngine too.
"""

from __future__ import annotations

import math
import struct
from typing import Any

_PACK = struct.Struct("f")


def round32(value: float) -> float:
    """The float32 nearest ``value`` (ties to even), as a Python float; inf on overflow."""
    try:
        return float(_PACK.unpack(_PACK.pack(value))[0])
    except OverflowError:  # beyond float32's range: torch gives +-inf
        return float("inf") if value > 0 else float("-inf")


def _cast(other: Any) -> float | None:
    if isinstance(other, bool) or not isinstance(other, int | float):
        return None
    return round32(float(other))


class F32(float):
    """A float32 scalar: every arithmetic operation rounds to float32."""

    __slots__ = ()

    def __new__(cls, value: float) -> F32:
        return super().__new__(cls, round32(float(value)))

    def __repr__(self) -> str:
        return f"F32({float(self)!r})"

    def _binary(self, other: Any, op: str, reflected: bool) -> Any:
        b = _cast(other)
        if b is None:
            return NotImplemented
        a = float(self)
        x, y = (b, a) if reflected else (a, b)
        if op == "+":
            return F32(x + y)
        if op == "-":
            return F32(x - y)
        if op == "*":
            return F32(x * y)
        if y == 0:  # torch: x/0 is +-inf or nan, never an exception
            if x == 0 or x != x:
                return F32(math.nan)
            return F32(math.copysign(math.inf, x) * math.copysign(1.0, y))
        return F32(x / y)

    def __add__(self, other: Any) -> Any:
        return self._binary(other, "+", False)

    def __radd__(self, other: Any) -> Any:
        return self._binary(other, "+", True)

    def __sub__(self, other: Any) -> Any:
        return self._binary(other, "-", False)

    def __rsub__(self, other: Any) -> Any:
        return self._binary(other, "-", True)

    def __mul__(self, other: Any) -> Any:
        return self._binary(other, "*", False)

    def __rmul__(self, other: Any) -> Any:
        return self._binary(other, "*", True)

    def __truediv__(self, other: Any) -> Any:
        return self._binary(other, "/", False)

    def __rtruediv__(self, other: Any) -> Any:
        # torch computes ``x / tensor`` as ``tensor.reciprocal() * x``
        if _cast(other) is None:
            return NotImplemented
        return self._binary(1.0, "/", True) * other

    def _compare(self, other: Any) -> tuple[float, float] | None:
        b = _cast(other)
        return None if b is None else (float(self), b)

    def __lt__(self, other: Any) -> Any:
        pair = self._compare(other)
        return NotImplemented if pair is None else pair[0] < pair[1]

    def __le__(self, other: Any) -> Any:
        pair = self._compare(other)
        return NotImplemented if pair is None else pair[0] <= pair[1]

    def __gt__(self, other: Any) -> Any:
        pair = self._compare(other)
        return NotImplemented if pair is None else pair[0] > pair[1]

    def __ge__(self, other: Any) -> Any:
        pair = self._compare(other)
        return NotImplemented if pair is None else pair[0] >= pair[1]

    def __hash__(self) -> int:
        return float.__hash__(self)
