"""Typed checks for config fields: each returns the normalised value or raises ``Invalid``.

Kept separate from the scheduler table so every check has one wording everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], Any]


class Invalid(Exception):
    """A field value is unusable; the message says why (the caller adds where)."""


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def number(*, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, allow_inf: bool = False) -> Check:
    """A finite int or float (not bool) within optional bounds; ``allow_inf`` admits
    ``+inf`` too (MMEngine's ``end=float('inf')``), never NaN or ``-inf``."""

    def check(value: Any) -> float | int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"must be a number, got {_describe(value)} ({type(value).__name__})")
        if isinstance(value, float) and not math.isfinite(value) and not (
                allow_inf and value == math.inf):
            raise Invalid(f"must be a finite number, got {value!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise Invalid(f"must be {'>' if low_open else '>='} {low}, got {value!r}")
        if high is not None and (value >= high if high_open else value > high):
            raise Invalid(f"must be {'<' if high_open else '<='} {high}, got {value!r}")
        return value

    return check


def strict_float(*, low: float, high: float) -> Check:
    """A float (MMEngine checks ``isinstance(x, float)``) in ``[low, high]``."""
    inner = number(low=low, high=high)

    def check(value: Any) -> float:
        if not isinstance(value, float):
            raise Invalid(f"must be a float in [{low}, {high}], got {_describe(value)}")
        return float(inner(value))

    return check


def integer(*, low: int | None = None, nonzero: bool = False) -> Check:
    """An int (not bool) within optional bounds."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"must be an integer, got {_describe(value)} ({type(value).__name__})")
        if low is not None and value < low:
            raise Invalid(f"must be >= {low}, got {value!r}")
        if nonzero and value == 0:
            raise Invalid("must not be 0 (MMEngine would take a modulo by zero)")
        return value

    return check


def boolean(value: Any) -> bool:
    """A flag, read by truthiness as MMEngine does (``by_epoch=0`` is False, ``1`` True,
    ``None`` False). Strings and containers are refused: ``"False"`` would be True."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and math.isfinite(value):
        return bool(value)
    raise Invalid(f"must be true or false, got {_describe(value)}")


def nonzero_number(value: Any) -> float | int:
    """A finite number other than 0 (a modulo by it must not divide by zero)."""
    out = number()(value)
    if out == 0:
        raise Invalid("must not be 0 (MMEngine would take a modulo by zero)")
    return out


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(f"must be a non-empty string, got {_describe(value)}")
    return value


def choice(*options: str) -> Check:
    def check(value: Any) -> str:
        if value not in options:
            raise Invalid(f"must be one of {', '.join(map(repr, options))}, got {_describe(value)}")
        return str(value)

    return check


def sequence_of(item: Check, *, min_len: int = 0) -> Check:
    """A list or tuple whose items all pass ``item``; returned as a tuple."""

    def check(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise Invalid(f"must be a list, got {_describe(value)}")
        if len(value) < min_len:
            raise Invalid(f"must have at least {min_len} item(s), got {len(value)}")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item(v))
            except Invalid as exc:
                raise Invalid(f"item {i}: {exc}") from None
        return tuple(out)

    return check


def number_or_sequence(item: Check) -> Check:
    """One number for every group, or a list with one per group (length checked later)."""
    seq = sequence_of(item, min_len=1)

    def check(value: Any) -> Any:
        if isinstance(value, list | tuple):
            return seq(value)
        return item(value)

    return check


def optional(inner: Check) -> Check:
    def check(value: Any) -> Any:
        return None if value is None else inner(value)

    return check


def minus_one(value: Any) -> int:
    if value != -1 or isinstance(value, bool):
        raise Invalid("resuming through last_step is not supported; use a checkpoint's state_dict")
    return -1
