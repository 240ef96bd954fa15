"""Shared pieces of the CLI: constants, errors, argument types, table formatting."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from datetime import UTC, datetime

from paramsched.client.admin import MAX_PREVIEW_ITERATIONS, MODES
from paramsched.client.results import GroupValues, JobInfo

__all__ = ["MAX_PREVIEW_ITERATIONS", "MODES"]

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_BASE = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
ADAM_BETA2 = 0.999
# Iterations per engine chunk when plotting a config locally (a progress step).
ENGINE_CHUNK = 8192
PROGRESS_MIN_ITERATIONS = 50_000
PARAM_HELP = "a param_groups key: lr, momentum, weight_decay..."


class UsageError(Exception):
    """Bad input from the user (flags, config files): exit status 2, like argparse."""


class CliError(Exception):
    """A command that could not finish for a reason other than a server error (exit 1)."""


# -- argument types ------------------------------------------------------------------
def env(name: str, default: str | None = None) -> str | None:
    """``PARAMSCHED_<name>``: every flag of every command has such a variable."""
    return os.environ.get(f"PARAMSCHED_{name}", default)


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _nonnegative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1, got 0")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _start_factor(text: str) -> float:
    """A LinearParamScheduler start_factor: MMEngine needs 0 < F <= 1."""
    value = _finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names, e.g. lr,momentum")
    return names


def _indices(text: str) -> list[int]:
    try:
        return [_nonnegative_int(n.strip()) for n in text.split(",") if n.strip()]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"expected group indices like 0,1: {exc}") from None


def _assignments(text: str) -> dict[str, float]:
    """``lr=0.1,momentum=0.9`` -> {"lr": 0.1, "momentum": 0.9}."""
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE pairs, got {item!r}")
        out[name.strip()] = _finite(raw.strip())
    return out
# -- output helpers ------------------------------------------------------------------
def fmt(value: float) -> str:
    return f"{value:.6g}"


def when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [headers, *rows]]
    return "\n".join(lines)


def plural(count: int, word: str) -> str:
    """``1 param group``, ``2 param groups``."""
    return f"{count} {word}" + ("" if count == 1 else "s")


def job_length(job: JobInfo) -> str:
    """Training length; in epochs too for an epoch-based job (a change may make it
    a fractional number of epochs)."""
    if job.epoch_based and job.epoch_length:
        return (f"{job.max_iters} iterations ({job.max_iters / job.epoch_length:g} epochs "
                f"of {job.epoch_length})")
    return f"{job.max_iters} iterations"


def values_table(values: GroupValues, params: Sequence[str]) -> str:
    rows = [[str(g), *(fmt(v[p]) for p in params)] for g, v in enumerate(values)]
    return table(["group", *params], rows)
