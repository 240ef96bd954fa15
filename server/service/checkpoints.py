"""Checkpoint states: the service's own format, checked before anything is stored.

Format ``paramsched.schedule/v2`` is an envelope around the exact bytes that were
signed::

    {"format": "paramsched.schedule/v2", "payload": "<canonical JSON>",
     "key_id": "<id>", "signature": "<hex HMAC-SHA256 of payload>"}

``key_id`` and ``signature`` are empty when the server has no state key. The payload
holds the job id, incarnation, generation, iteration, spec, decisions, changes, audit
trail and (optionally) the keyframe at the iteration: the replay states a server
continues from, so loading costs the same at iteration 10^7 as at 10. Version 1
(``{"format": 1, ...}``, changes under ``"overrides"``) was unsigned; it is read as an
unsigned state.

Everything is validated here, field by field, before the service stores anything: a
refused state changes nothing. Non-finite numbers are accepted only in validation
metrics and in a scheduler's ``end`` (see ``canonical_json``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument
from ..schedules import JobSpec, MetricsError
from ..schedules.reschedule import Schedule
from ..store import canonical_json, content_hash
from .inputs import Limits, check_job_id, checked_changes, parse_json, parse_spec
from .signing import StateKeys

FORMAT_V2 = "paramsched.schedule/v2"
FORMAT_V1 = 1
MAX_GENERATION = 2**53 - 1  # exact in the Redis scripts' Lua numbers
MAX_AUDIT_ENTRIES = 10_000
MAX_TEXT = 4096
ACTION_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
EPOCH_KEY = re.compile(r"0|[1-9][0-9]{0,17}")
INCARNATION_PATTERN = re.compile(r"[0-9a-f]{0,64}")
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{0,128}")

_ENVELOPE_KEYS = {"format", "payload", "key_id", "signature"}
_PAYLOAD_KEYS = {"job_id", "incarnation", "generation", "iteration", "spec", "decisions",
                 "changes", "audit", "run_id", "saved_at", "keyframe"}
_V1_KEYS = {"format", "job_id", "generation", "iteration", "spec", "decisions", "overrides",
            "audit"}
_OPTIONAL_AUDIT_KEYS = {"request_id"}  # a change's idempotency key
_AUDIT_KEYS = {"time", "principal", "action", "iteration", "generation", "details", "reason",
               "before", "after"}


@dataclass(frozen=True)
class CheckpointState:
    """A checkpoint state, validated; ``signed`` only when a key of ours verified it."""

    job_id: str
    incarnation: str
    generation: int
    iteration: int
    spec: JobSpec
    decisions: dict[int, dict[str, float] | None]
    changes: list[dict[str, Any]]
    schedule: Schedule
    audit: list[dict[str, Any]]
    signed: bool
    signature_state: str  # "valid", "unsigned", "unknown key" or "invalid"
    digest: str  # the hash that identifies this exact checkpoint
    # The replay states at ``iteration`` (``Schedule.keyframe``), checked to fit the
    # schedule; a server continues from them only when it trusts the state.
    keyframe: dict[str, Any] | None = None


def _fail(reason: str, field: str) -> InvalidArgument:
    return InvalidArgument(reason, field=field)


def _integer(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(f"must be an integer in [{low}, {high}], got {value!r}", field)
    return value


def _text(value: Any, field: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise _fail(f"must be a string of at most {limit} characters", field)
    return value


def _finite(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(f"must be a finite number, got {value!r}", field)
    return float(value)


def check_finite(data: Any, field: str) -> None:
    """Refuse a non-finite number anywhere in ``data`` but a scheduler's ``end``."""
    if isinstance(data, float) and not math.isfinite(data):
        if not field.endswith(".end") or "param_scheduler" not in field:
            raise _fail(f"must be a finite number, got {data!r} (non-finite numbers are "
                        "allowed only in validation metrics and a scheduler's end)", field)
    elif isinstance(data, Mapping):
        for key, value in data.items():
            check_finite(value, f"{field}.{key}")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            check_finite(value, f"{field}[{i}]")


def _values_list(raw: Any, field: str) -> list[dict[str, float]]:
    if not isinstance(raw, list) or len(raw) > 256:
        raise _fail("must be a list of per-group values", field)
    out = []
    for g, group in enumerate(raw):
        if not isinstance(group, Mapping) or len(group) > 64:
            raise _fail("must be an object of param -> value", f"{field}[{g}]")
        out.append({_text(k, f"{field}[{g}]", 128): _finite(v, f"{field}[{g}].{k}")
                    for k, v in group.items()})
    return out


def check_audit(raw: Any, field: str = "state.audit") -> list[dict[str, Any]]:
    """A well-formed audit trail (as the service writes it), or INVALID_ARGUMENT."""
    if not isinstance(raw, list):
        raise _fail("must be a list of audit entries", field)
    if len(raw) > MAX_AUDIT_ENTRIES:
        raise _fail(f"{len(raw)} entries exceed the limit {MAX_AUDIT_ENTRIES}", field)
    out = []
    for i, entry in enumerate(raw):
        where = f"{field}[{i}]"
        if not isinstance(entry, Mapping) or not _AUDIT_KEYS <= set(entry) <= (
                _AUDIT_KEYS | _OPTIONAL_AUDIT_KEYS):
            raise _fail(f"must be an object with the fields {sorted(_AUDIT_KEYS)} (and "
                        f"optionally {sorted(_OPTIONAL_AUDIT_KEYS)})", where)
        action = entry["action"]
        if not isinstance(action, str) or not ACTION_PATTERN.fullmatch(action):
            raise _fail(f"must be an action name, got {action!r}", f"{where}.action")
        time = _finite(entry["time"], f"{where}.time")
        if time < 0:
            raise _fail("must be >= 0", f"{where}.time")
        check_finite(entry["details"], f"{where}.details")
        checked: dict[str, Any] = {}
        if "request_id" in entry:
            checked["request_id"] = _text(entry["request_id"], f"{where}.request_id", 128)
        out.append({
            **checked,
            "time": time,
            "principal": _text(entry["principal"], f"{where}.principal", 256),
            "action": action,
            "iteration": _integer(entry["iteration"], f"{where}.iteration", 0, 10**15),
            "generation": _integer(entry["generation"], f"{where}.generation", 0,
                                   MAX_GENERATION),
            "details": entry["details"],
            "reason": _text(entry["reason"], f"{where}.reason"),
            "before": _values_list(entry["before"], f"{where}.before"),
            "after": _values_list(entry["after"], f"{where}.after"),
        })
    return out


def check_change_data(raw: Any, field: str, limits: Limits) -> dict[str, Any]:
    """A change's own shape and limits (the engine checks it against the job)."""
    if not isinstance(raw, Mapping):
        raise _fail("must be an object", field)
    check_finite(raw, field)
    max_iters = raw.get("max_iters")
    if isinstance(max_iters, int) and not isinstance(max_iters, bool) \
            and max_iters > limits.max_iters:
        raise _fail(f"{max_iters} exceeds the limit max_iters={limits.max_iters}",
                    f"{field}.max_iters")
    configs = raw.get("param_scheduler")
    if isinstance(configs, list):
        limits.check_spec({"param_scheduler": configs}, field)
    if "resolved" in raw:
        _values_list(raw["resolved"], f"{field}.resolved")
    return dict(raw)


def _decisions(raw: Any, spec: JobSpec, iteration: int,
               limits: Limits) -> dict[int, dict[str, float] | None]:
    if not isinstance(raw, Mapping):
        raise _fail("must be an object of epoch -> metrics", "state.decisions")
    done = spec.decisions_done(iteration)  # epochs, or val_interval's points
    schedule = Schedule(spec)
    out: dict[int, dict[str, float] | None] = {}
    for key, metrics in raw.items():
        where = f"state.decisions[{key!r}]"
        if not isinstance(key, str) or not EPOCH_KEY.fullmatch(key):
            raise _fail("epochs are written as decimal integers", where)
        epoch = int(key)
        if epoch >= done:
            raise _fail(f"epoch {epoch} had not ended at iteration {iteration} "
                        f"({done} epochs done)", where)
        if metrics is not None:
            if not isinstance(metrics, Mapping):
                raise _fail("must be an object of metric -> value, or null", where)
            limits.check_metrics(metrics, where)
            for name, value in metrics.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise _fail(f"must be a number, got {value!r}", f"{where}.{name}")
        try:
            schedule.check_metrics(epoch, metrics)
        except MetricsError as exc:  # the metric a plateau monitors is missing
            raise _fail(exc.reason, f"{where}.{exc.field}") from None
        out[epoch] = ({k: float(v) for k, v in metrics.items()} if metrics is not None
                      else None)
    return out


def _envelope(state: Mapping[str, Any], keys: StateKeys | None) -> tuple[dict[str, Any], str]:
    """The v2 payload and its signature state."""
    if set(state) != _ENVELOPE_KEYS:
        raise _fail(f"a {FORMAT_V2} state has exactly the fields {sorted(_ENVELOPE_KEYS)}",
                    "state_json")
    payload_text = state["payload"]
    if not isinstance(payload_text, str):
        raise _fail("must be a string (the signed JSON)", "state.payload")
    key_id = _text(state["key_id"], "state.key_id", 64)
    signature = _text(state["signature"], "state.signature", 128)
    if not key_id and not signature:
        signature_state = "unsigned"
    elif keys is None or not keys.knows(key_id):
        signature_state = "unknown key"
    elif keys.verify(key_id, payload_text.encode(), signature):
        signature_state = "valid"
    else:
        signature_state = "invalid"
    payload = parse_json(payload_text, "state.payload")
    if not isinstance(payload, dict):
        raise _fail("must be a JSON object", "state.payload")
    unknown = sorted(set(payload) - _PAYLOAD_KEYS)
    if unknown:
        raise _fail(f"unknown fields {unknown}", "state.payload")
    missing = sorted({"job_id", "generation", "iteration", "spec"} - set(payload))
    if missing:
        raise _fail(f"missing fields {missing}", "state.payload")
    return payload, signature_state


def parse_state(state_json: str, *, keys: StateKeys | None, limits: Limits) -> CheckpointState:
    """Validate a checkpoint state completely (nothing is stored here)."""
    state = parse_json(state_json, "state_json")
    if not isinstance(state, dict):
        raise _fail("must be a JSON object", "state_json")
    fmt = state.get("format")
    if fmt == FORMAT_V2:
        payload, signature_state = _envelope(state, keys)
        changes_raw = payload.get("changes", [])
    elif fmt == FORMAT_V1:
        unknown = sorted(set(state) - _V1_KEYS)
        if unknown:
            raise _fail(f"unknown fields {unknown}", "state_json")
        payload, signature_state = state, "unsigned"
        changes_raw = state.get("overrides") or []
    else:
        raise _fail(f"unsupported state format {fmt!r} (this server reads {FORMAT_V2!r} and "
                    "the unsigned format 1)", "state.format")
    for key in ("generation", "iteration", "spec", "decisions"):
        if key not in payload:
            raise _fail("is missing", f"state.{key}")
    job_id = check_job_id(payload["job_id"], "state.job_id") if "job_id" in payload else ""
    incarnation = payload.get("incarnation", "")
    if not isinstance(incarnation, str) or not INCARNATION_PATTERN.fullmatch(incarnation):
        raise _fail("must be a job incarnation (hex)", "state.incarnation")
    if not isinstance(payload.get("run_id", ""), str):
        raise _fail("must be a string", "state.run_id")
    saved_at = payload.get("saved_at", 0.0)
    _finite(saved_at, "state.saved_at")
    generation = _integer(payload["generation"], "state.generation", 1, MAX_GENERATION - 1)
    spec_raw = payload["spec"]
    check_finite(spec_raw, "state.spec")
    spec = parse_spec(spec_raw, prefix="state.spec", limits=limits)
    if not isinstance(changes_raw, list):
        raise _fail("must be a list of changes", "state.changes")
    if len(changes_raw) > limits.max_changes:
        raise _fail(f"{len(changes_raw)} changes exceed the limit max_changes="
                    f"{limits.max_changes}", "state.changes")
    changes = [check_change_data(c, f"state.changes[{i}]", limits)
               for i, c in enumerate(changes_raw)]
    # The iteration is checked against the job's length with its changes (a change may
    # extend training), and decisions against the iteration.
    schedule = checked_changes(spec, changes, {})
    iteration = _integer(payload["iteration"], "state.iteration", 0, schedule.max_iters)
    decisions = _decisions(payload["decisions"], spec, iteration, limits)
    if decisions:
        schedule = checked_changes(spec, changes, decisions)
    audit = check_audit(payload.get("audit", []))
    keyframe = payload.get("keyframe")
    if keyframe is not None:
        if not isinstance(keyframe, Mapping) or keyframe.get("iteration") != iteration:
            raise _fail(f"must be the replay states at the state's iteration {iteration}",
                        "state.keyframe")
        try:
            schedule.seed(keyframe)
        except ValueError as exc:
            raise _fail(str(exc), "state.keyframe") from None
    return CheckpointState(
        job_id=job_id, incarnation=incarnation, generation=generation, iteration=iteration,
        spec=spec, decisions=decisions, changes=changes, schedule=schedule, audit=audit,
        signed=signature_state == "valid", signature_state=signature_state,
        digest=content_hash(payload), keyframe=dict(keyframe) if keyframe else None)


def build_state(payload: dict[str, Any], keys: StateKeys | None) -> str:
    """The v2 state JSON for ``payload``, signed when the server has a key."""
    text = canonical_json(payload)
    key_id, signature = keys.sign(text.encode()) if keys is not None else ("", "")
    return canonical_json({"format": FORMAT_V2, "payload": text, "key_id": key_id,
                           "signature": signature})
