"""Validating what callers send: job ids, specs, limits, checkpoint states."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument
from ..schedules import (
    ConfigError,
    JobSpec,
    build_job_spec,
)
from ..schedules.reschedule import Schedule

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Limits:
    """Input limits; each breach is INVALID_ARGUMENT naming the limit."""

    max_schedulers: int = 64
    max_param_groups: int = 256
    max_params_per_group: int = 64
    max_list_items: int = 10_000  # milestones, periods, restart weights, per-group lists
    max_metrics: int = 64
    max_metric_name: int = 128
    max_iters: int = 10**9
    max_changes: int = 1000  # per generation
    max_world_size: int = 65_536  # ranks per run: bounds a job's stored progress

    def check_spec(self, data: Mapping[str, Any], prefix: str) -> None:
        schedulers = data.get("param_scheduler")
        if isinstance(schedulers, list) and len(schedulers) > self.max_schedulers:
            raise InvalidArgument(
                f"{len(schedulers)} schedulers exceed the limit max_schedulers="
                f"{self.max_schedulers}", field=f"{prefix}.param_scheduler")
        for i, cfg in enumerate(schedulers if isinstance(schedulers, list) else []):
            for key, value in (cfg.items() if isinstance(cfg, dict) else ()):
                if isinstance(value, list) and len(value) > self.max_list_items:
                    raise InvalidArgument(
                        f"{len(value)} items exceed the limit max_list_items="
                        f"{self.max_list_items}", field=f"{prefix}.param_scheduler[{i}].{key}")
        groups = data.get("initial_values")
        if isinstance(groups, list):
            if len(groups) > self.max_param_groups:
                raise InvalidArgument(
                    f"{len(groups)} param groups exceed the limit max_param_groups="
                    f"{self.max_param_groups}", field=f"{prefix}.initial_values")
            for g, group in enumerate(groups):
                if isinstance(group, dict) and len(group) > self.max_params_per_group:
                    raise InvalidArgument(
                        f"{len(group)} values exceed the limit max_params_per_group="
                        f"{self.max_params_per_group}", field=f"{prefix}.initial_values[{g}]")
        for key in ("max_iters", "max_epochs"):
            value = data.get(key)
            if isinstance(value, int) and value > self.max_iters:
                raise InvalidArgument(f"{value} exceeds the limit max_iters={self.max_iters}",
                                      field=f"{prefix}.{key}")
        epochs, length = data.get("max_epochs"), data.get("epoch_length")
        if isinstance(epochs, int) and isinstance(length, int) and epochs * length > self.max_iters:
            raise InvalidArgument(f"max_epochs * epoch_length exceeds the limit max_iters="
                                  f"{self.max_iters}", field=f"{prefix}.max_epochs")

    def check_metrics(self, metrics: Mapping[str, float], field: str) -> None:
        if len(metrics) > self.max_metrics:
            raise InvalidArgument(f"{len(metrics)} metrics exceed the limit max_metrics="
                                  f"{self.max_metrics}", field=field)
        for name in metrics:
            if not name or len(name) > self.max_metric_name:
                raise InvalidArgument(
                    f"metric names must have 1 to max_metric_name={self.max_metric_name} "
                    "characters", field=field)


def check_job_id(job_id: str, field: str = "job_id") -> str:
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise InvalidArgument(
            f"job id {job_id!r} must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            field=field,
        )
    return job_id


def spec_difference(stored: Any, given: Any, path: str = "") -> list[str]:
    """Human-readable differences between two canonical spec dicts."""
    if isinstance(stored, dict) and isinstance(given, dict):
        out: list[str] = []
        for key in sorted(set(stored) | set(given), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in stored:
                out.append(f"{sub}: not set in the existing job, given {given[key]!r}")
            elif key not in given:
                out.append(f"{sub}: existing job has {stored[key]!r}, not given")
            else:
                out.extend(spec_difference(stored[key], given[key], sub))
        return out
    if isinstance(stored, list) and isinstance(given, list):
        if len(stored) != len(given):
            return [f"{path}: existing job has {len(stored)} entries, given {len(given)}"]
        out = []
        for i, (a, b) in enumerate(zip(stored, given, strict=True)):
            out.extend(spec_difference(a, b, f"{path}[{i}]"))
        return out
    if stored != given or type(stored) is not type(given):
        return [f"{path}: existing job has {stored!r}, given {given!r}"]
    return []


def config_error(exc: ConfigError, prefix: str) -> InvalidArgument:
    reason = f"({exc.scheduler_type}) {exc.reason}" if exc.scheduler_type else exc.reason
    return InvalidArgument(reason, field=f"{prefix}.{exc.field}" if prefix else exc.field)


def parse_spec(data: Mapping[str, Any], prefix: str = "spec",
               limits: Limits | None = None, *, stored: bool | None = None) -> JobSpec:
    """Validate a spec dict (``JobSpec.to_dict()`` shape) into a JobSpec.

    ``stored``: the dict was written by a server (a stored record, a checkpoint; the
    default for any prefix but ``"spec"``), so a missing ``semantics`` means the engine's
    version 1; a new job's spec without one gets the current version.
    """
    if stored is None:
        stored = prefix != "spec"
    if not isinstance(data, Mapping):
        raise InvalidArgument("must be an object", field=prefix)
    (limits or Limits()).check_spec(data, prefix)
    try:
        return build_job_spec(
            data.get("param_scheduler"),
            data.get("initial_values"),
            epoch_length=data.get("epoch_length"),
            max_epochs=data.get("max_epochs"),
            max_iters=data.get("max_iters"),
            bounds=data.get("bounds"),
            max_jump_factor=data.get("max_jump_factor"),
            semantics=data.get("semantics", 1 if stored else None),
            dtypes=data.get("dtypes"),
            val_interval=data.get("val_interval"),
        )
    except ConfigError as exc:
        raise config_error(exc, prefix) from None


def parse_json(text: str, field: str) -> Any:
    """JSON from a caller: anything unparsable (or nested deeper than the parser can
    go) is INVALID_ARGUMENT naming the field."""
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        reason = "nests too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidArgument(f"is not valid JSON: {reason}", field=field) from None


def checked_changes(spec: JobSpec, changes: Any,
                     decisions: dict[int, dict[str, float] | None]) -> Schedule:
    if not isinstance(changes, list) or not all(isinstance(o, dict) for o in changes):
        raise InvalidArgument("must be a list of changes", field="state.changes")
    try:
        return Schedule.from_changes(spec, changes, decisions)
    except ConfigError as exc:
        raise config_error(exc, "state") from None
