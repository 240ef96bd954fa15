"""Fuzzing a running server: odd, wrong and garbage requests get a documented answer.

Hypothesis generates protobuf requests for every SchedulerService method: odd job ids
(empty, unicode, ``{``, too long), negative / huge integers, NaN and infinite metrics
and values, huge lists and maps, invalid JSON, JSON of the wrong shape, unknown
scheduler types, random text as ``param_scheduler_json``, valid messages with unknown
fields, and raw garbage bytes sent to every method path. Against an in-process server
on the embedded store, on Redis, and with bearer tokens on (odd or missing tokens too):

* every reply is OK or one of the documented codes (INVALID_ARGUMENT, NOT_FOUND,
  ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED for oversized requests;
  UNAUTHENTICATED and PERMISSION_DENIED with auth on), never INTERNAL or UNKNOWN;
* a refused request changes no stored state (ListJobs, and GetJob + GetState +
  GetJobHistory of the seeded jobs, are the same before and after it);
* the server is still SERVING at the end.

Requests that would legitimately take the server minutes (values of a 10^9-iteration
job from iteration 0, a cold query far into one) are kept out of the random mix: the
loops of generated specs that share ids with other methods stay small, and ranges of
values stay under 10^4 iterations. The tests at the end pin down each bug the fuzzing
found, as a minimal example.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc
from paramsched.server.errors import InvalidArgument
from paramsched.server.service import SchedulerService
from paramsched.server.store import EmbeddedJobStore

from grpc_harness import InProcessServer
from redis_harness import RedisServer
from strategies import cases
from test_service_grpc import PLATEAU, WARMUP_COSINE, spec_proto

SERVICE = "paramsched.api.v1.SchedulerService"
METHODS = {m.name: m for m in pb.DESCRIPTOR.services_by_name["SchedulerService"].methods}
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,  # fenced: a stale generation or incarnation
    grpc.StatusCode.ABORTED,  # the job changed meanwhile: retry
    grpc.StatusCode.OUT_OF_RANGE,  # a change before the issued frontier
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
MAX_MESSAGE_BYTES = 64 * 1024  # small, so that oversized requests are cheap to make

ITERATION_BASED = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, end=10),
    dict(type="CosineAnnealingLR", by_epoch=False, begin=10, eta_min=1e-5),
]
SEEDS: dict[str, pb.JobSpec] = {
    "seed-cos": spec_proto(WARMUP_COSINE),
    "seed-plateau": spec_proto(PLATEAU),
    "seed-iter": spec_proto(ITERATION_BASED, max_epochs=None, max_iters=30),
}
POOL = [*SEEDS, "fuzz-a", "fuzz-b"]
HUGE_IDS = ["huge-1", "huge-2"]  # jobs with huge loops; no other method ever asks them
ODD_IDS = ["", "{", "}", "{seed-cos}", "a{b}", "seed-cos\n", " seed-cos", "é", "\u202e",
           "x" * 128, "x" * 129, "job/1", "..", "a\x00b", "\U0001f642", "*", "seed-*"]


# -- strategies ------------------------------------------------------------------------
def job_ids() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(POOL), st.sampled_from(ODD_IDS),
                     st.text(max_size=12).filter(lambda s: not s.startswith("huge-")))


def int32s() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(-3, 40),
                     st.sampled_from([-2**31, 2**31 - 1, -1, 0, 1, 255, 4096, 4097, 10**6]),
                     st.integers(-2**31, 2**31 - 1))


def int64s() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(-3, 60),
                     st.sampled_from([-2**63, 2**63 - 1, -1, 10**9, 10**9 + 1, 2**53 + 1,
                                      10**18]),
                     st.integers(-2**63, 2**63 - 1))


def small_or_negative() -> st.SearchStrategy[int]:
    """Iterations a request may ask for without making the server replay for minutes."""
    return st.one_of(st.integers(-3, 80), st.sampled_from([-2**63, -1, 10**12, 2**63 - 1]))


def doubles() -> st.SearchStrategy[float]:
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308,
                                      5e-324, 0.1, 0.9]))


def names() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(["lr", "momentum", "weight_decay", "loss", "acc", "betas",
                                      "", "x" * 129, "{", "\U0001f642"]),
                     st.text(max_size=8))


JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(),
                        st.floats(allow_nan=False), st.text(max_size=8))
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12,
)
SCHEDULER_FIELDS = ["type", "begin", "end", "by_epoch", "T_max", "gamma", "milestones",
                    "start_factor", "end_factor", "eta_min", "eta_min_ratio", "factor",
                    "periods", "restart_weights", "param_name", "convert_to_iter_based",
                    "monitor", "patience", "total_steps", "eta_max", "step_size", "power"]
TYPES = ["LinearLR", "CosineAnnealingLR", "MultiStepLR", "StepLR", "ExponentialLR",
         "ReduceOnPlateauLR", "OneCycleLR", "CosineRestartLR", "PolyLR", "ConstantLR",
         "CosineAnnealingMomentum", "LinearParamScheduler", "NoSuchLR", "", "lr",
         "__class__", "LinearLR "]
HUGE_JSON = [
    json.dumps([{"type": "MultiStepLR", "milestones": list(range(10_001))}]),
    json.dumps([{"type": "ConstantLR"}] * 65),
    json.dumps([{"type": "LinearLR", "by_epoch": False, "x" * 1000: 1}]),
]


def odd_configs() -> st.SearchStrategy[str]:
    """JSON text for a ``param_scheduler``: nearly right, wrong shapes, or not JSON."""
    scheduler = st.dictionaries(st.sampled_from(SCHEDULER_FIELDS),
                                st.one_of(st.sampled_from(TYPES), JSON_VALUES), max_size=6)
    typed = st.builds(lambda t, rest: {"type": t, **rest}, st.sampled_from(TYPES), scheduler)
    return st.one_of(
        st.lists(typed, max_size=3).map(json.dumps),
        JSON_VALUES.map(json.dumps),
        st.text(max_size=30),
        st.binary(max_size=30).map(lambda b: b.decode("latin-1")),
        st.sampled_from(["", "[{", "NaN", "[NaN]", "Infinity", '[{"type": 1e999}]', "[]",
                         "{}", "null", '"LinearLR"', '[{"type": "LinearLR", "end": -1e999}]',
                         *HUGE_JSON]),
    )


def groups_proto(groups: list[dict[str, Any]]) -> list[pb.ParamGroup]:
    out = []
    for group in groups:
        message = pb.ParamGroup()
        for key, value in group.items():
            if key == "betas":
                message.betas.extend(value)
            else:
                message.values[key] = value
        out.append(message)
    return out


@st.composite
def job_specs(draw: st.DrawFn, small: bool = True, mutate: bool = True) -> pb.JobSpec:
    """A JobSpec: a random valid-looking MMEngine job, or (``mutate``) one with odd parts.

    ``small``: the loop stays under 100 iterations (jobs other methods may query); else
    it may be anything up to 2^63 - 1."""
    spec = pb.JobSpec()
    if not mutate or draw(st.booleans()):
        case = draw(cases())
        spec.param_scheduler_json = json.dumps(case.param_scheduler)
        spec.initial_values.extend(groups_proto(case.initial_values))
        spec.epoch_length = case.epoch_length
        if case.max_epochs is not None:
            spec.max_epochs = case.max_epochs
        if case.max_iters is not None:
            spec.max_iters = case.max_iters
    else:
        spec.param_scheduler_json = draw(odd_configs())
        groups = draw(st.lists(st.builds(
            lambda values, betas: pb.ParamGroup(values=values, betas=betas),
            st.dictionaries(names(), doubles(), max_size=4),
            st.lists(doubles(), max_size=3)), max_size=3))
        spec.initial_values.extend(groups)
    if not mutate:
        return spec
    if draw(st.integers(0, 9)) == 0:  # the wrong number of groups, or too many
        spec.ClearField("initial_values")
        count = draw(st.sampled_from([0, 257]))
        spec.initial_values.extend(groups_proto([{"lr": 0.1}] * count))
    loop = st.integers(-2, 60) if small else st.one_of(int64s(), st.integers(-2, 60))
    for name in ("epoch_length", "max_epochs", "max_iters"):
        choice = draw(st.integers(0, 5))
        if choice == 0:
            spec.ClearField(name)  # type: ignore[arg-type]
        elif choice == 1:
            setattr(spec, name, draw(loop))
    if draw(st.integers(0, 4)) == 0:
        for name in draw(st.lists(names(), max_size=2)):
            bounds = spec.bounds[name]
            if draw(st.booleans()):
                bounds.min = draw(doubles())
            if draw(st.booleans()):
                bounds.max = draw(doubles())
    if draw(st.integers(0, 4)) == 0:
        spec.max_jump_factor = draw(doubles())
    return spec


def metrics_maps() -> st.SearchStrategy[dict[str, float]]:
    return st.one_of(st.dictionaries(names(), doubles(), max_size=4),
                     st.just({f"m{i}": 1.0 for i in range(65)}))


@st.composite
def states(draw: st.DrawFn, real: dict[str, str]) -> str:
    """state_json: a real checkpoint of a seed with one part broken, or anything."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(odd_configs())
    envelope = json.loads(real[draw(st.sampled_from(sorted(real)))])
    if kind == 4:  # the envelope itself: format, signature, key id
        key = draw(st.sampled_from(["format", "payload", "key_id", "signature", "extra"]))
        envelope[key] = draw(JSON_VALUES)
        return json.dumps(envelope)
    state = json.loads(envelope["payload"])
    key = draw(st.sampled_from(["job_id", "incarnation", "generation", "iteration", "spec",
                                "decisions", "changes", "audit", "run_id", "saved_at",
                                "extra"]))
    if kind == 1:
        state.pop(key, None)
    elif key == "iteration":
        state[key] = draw(small_or_negative())
    elif key == "spec":
        state[key] = draw(st.one_of(JSON_VALUES, st.just({"param_scheduler": []})))
    else:
        state[key] = draw(JSON_VALUES)
    envelope["payload"] = json.dumps(state)
    return json.dumps(envelope)


def either(draw: st.DrawFn, plausible: st.SearchStrategy[Any],
           odd: st.SearchStrategy[Any]) -> Any:
    """Mostly a plausible value, one time in five an odd one: most requests are nearly
    right, so they get past the first check and exercise the ones behind it."""
    return draw(odd) if draw(st.integers(0, 9)) < 2 else draw(plausible)


POOL_IDS = st.sampled_from(POOL)
SEED_IDS = st.sampled_from(sorted(SEEDS))
RESCHEDULES = [
    "",
    json.dumps([{"type": "ConstantLR", "factor": 0.5, "by_epoch": False}]),
    json.dumps([{"type": "LinearLR", "start_factor": 1.0, "end_factor": 0.1,
                 "by_epoch": False, "end": 5}]),
    json.dumps([{"type": "CosineAnnealingLR", "T_max": 5, "by_epoch": False}]),
    json.dumps({"type": "ExponentialLR", "gamma": 0.9, "by_epoch": False}),
]


def plausible_spec(job_id: str) -> st.SearchStrategy[pb.JobSpec | None]:
    if job_id in SEEDS:
        return st.sampled_from([SEEDS[job_id], None])
    return st.one_of(st.none(), job_specs(mutate=False))


def requests(real_states: dict[str, str]) -> st.SearchStrategy[tuple[str, Message]]:
    """(method name, request message) for every method of the service."""

    @st.composite
    def attach(draw: st.DrawFn) -> tuple[str, Message]:
        job_id = either(draw, POOL_IDS, job_ids())
        request = pb.AttachJobRequest(
            job_id=job_id, world_size=either(draw, st.integers(0, 8), int32s()),
            rank=either(draw, st.integers(0, 3), int32s()),
            plan_size=either(draw, st.integers(0, 64), int32s()))
        spec = either(draw, plausible_spec(job_id), job_specs())
        if spec is not None:
            request.spec.CopyFrom(spec)
        return "AttachJob", request

    attach_huge = st.builds(
        lambda job_id, spec: ("AttachJob", pb.AttachJobRequest(job_id=job_id, spec=spec)),
        st.sampled_from(HUGE_IDS), job_specs(small=False))

    @st.composite
    def report(draw: st.DrawFn) -> tuple[str, Message]:
        iteration = either(draw, st.integers(0, 25), small_or_negative())
        request = pb.ReportProgressRequest(
            job_id=either(draw, SEED_IDS, job_ids()),
            generation=either(draw, st.integers(1, 3), int64s()),
            rank=either(draw, st.integers(0, 3), int32s()), iteration=iteration,
            plan_size=either(draw, st.integers(0, 64), int32s()))
        at_epoch_end = iteration > 0 and iteration % 5 == 0
        epoch_end = either(draw, st.just(iteration // 5 - 1 if at_epoch_end else None),
                           st.one_of(st.none(), st.integers(-2, 12), int64s()))
        if epoch_end is not None:
            request.epoch_end = epoch_end
        request.has_metrics = either(draw, st.just(epoch_end is not None), st.booleans())
        request.metrics.update(either(draw, st.fixed_dictionaries(
            {"loss": st.floats(0, 10)}), metrics_maps()))
        return "ReportProgress", request

    @st.composite
    def values(draw: st.DrawFn) -> tuple[str, Message]:
        start = either(draw, st.integers(0, 30), small_or_negative())
        stop = either(draw, st.one_of(st.just(0), st.integers(1, 30).map(lambda d: start + d)),
                      st.one_of(st.integers(-5, 5000).map(lambda d: start + d),
                                st.sampled_from([-1, -2**63])))
        stop = max(min(stop, 2**63 - 1), -2**63)
        return "GetValues", pb.GetValuesRequest(job_id=either(draw, POOL_IDS, job_ids()),
                                                start_iteration=start, stop_iteration=stop)

    @st.composite
    def preview(draw: st.DrawFn) -> tuple[str, Message]:
        start = either(draw, st.integers(0, 20),
                       st.one_of(st.integers(-3, 80), st.sampled_from([-2**63, -1])))
        stop = either(draw, st.integers(1, 40).map(lambda d: start + d),
                      st.one_of(st.integers(-5, 5000).map(lambda d: start + d),
                                st.sampled_from([-1, -2**63])))
        request = pb.PreviewScheduleRequest(
            spec=either(draw, job_specs(mutate=False), job_specs(small=False)),
            start_iteration=start, stop_iteration=stop)
        losses = st.none() | st.fixed_dictionaries({"loss": st.floats(0, 10)})
        decisions = either(
            draw, st.dictionaries(st.integers(0, 8), losses, max_size=3),
            st.dictionaries(st.one_of(st.integers(-2, 10), int64s()),
                            st.none() | metrics_maps(), max_size=3))
        for epoch, metrics in decisions.items():
            decision = request.decisions[epoch]
            decision.has_metrics = metrics is not None
            decision.metrics.update(metrics or {})
        return "PreviewSchedule", request

    @st.composite
    def reschedule(draw: st.DrawFn) -> tuple[str, Message]:
        request = pb.RescheduleJobRequest(
            job_id=either(draw, SEED_IDS, job_ids()),
            mode=either(draw, st.integers(0, 2), st.sampled_from([3, 99, -1])),
            param_scheduler_json=either(draw, st.sampled_from(RESCHEDULES), odd_configs()),
            params=either(draw, st.sampled_from([[], ["lr"]]), st.lists(names(), max_size=3)),
            groups=either(draw, st.sampled_from([[], [0]]), st.lists(int32s(), max_size=3)),
            start_values=either(draw, st.sampled_from([{}, {"lr": 0.05}]),
                                st.dictionaries(names(), doubles(), max_size=3)),
            dry_run=draw(st.booleans()), force=draw(st.booleans()),
            action=either(draw, st.sampled_from(["", "scale"]), st.text(max_size=10)),
            reason=draw(st.text(max_size=10)),
            preview_iterations=either(draw, st.sampled_from([0, 10]),
                                      st.sampled_from([-1, 1, 100_001, 2**31 - 1])))
        from_iteration = either(draw, st.none() | st.integers(10, 30),
                                st.none() | small_or_negative())
        if from_iteration is not None:
            request.from_iteration = from_iteration
        max_iters = either(draw, st.none() | st.integers(25, 60),
                           st.one_of(st.integers(-5, 10_000), st.just(-2**63)))
        if max_iters is not None:
            request.max_iters = max_iters
        return "RescheduleJob", request

    @st.composite
    def load(draw: st.DrawFn) -> tuple[str, Message]:
        job_id = either(draw, SEED_IDS, job_ids())
        state = either(draw, st.just(real_states.get(job_id, real_states["seed-cos"])),
                       states(real_states))
        return "LoadState", pb.LoadStateRequest(
            job_id=job_id, state_json=state, plan_size=either(draw, st.integers(0, 64),
                                                              int32s()))

    @st.composite
    def listing(draw: st.DrawFn) -> tuple[str, Message]:
        texts = st.one_of(st.sampled_from(ODD_IDS), st.text(max_size=6))
        return "ListJobs", pb.ListJobsRequest(
            prefix=either(draw, st.sampled_from(["", "seed-", "fuzz"]), texts),
            page_size=either(draw, st.integers(0, 5), int32s()),
            page_token=either(draw, st.sampled_from(["", *POOL]), texts))

    def by_id(method: str, message: type[Message], ids: st.SearchStrategy[str]
              ) -> st.SearchStrategy[tuple[str, Message]]:
        return st.builds(lambda j: (method, message(job_id=j)), ids)

    any_id = st.one_of(POOL_IDS, POOL_IDS, job_ids())
    return st.one_of(
        attach(), attach_huge, report(), values(), preview(), reschedule(), load(), listing(),
        by_id("GetJob", pb.GetJobRequest, any_id),
        by_id("GetJobHistory", pb.GetJobHistoryRequest, any_id),
        by_id("DeleteJob", pb.DeleteJobRequest,
              st.one_of(st.sampled_from(["fuzz-a", "fuzz-b", "fuzz-a", "seed-cos"]), job_ids())),
        st.builds(lambda j, i: ("GetState", pb.GetStateRequest(job_id=j, iteration=i)),
                  any_id, st.one_of(st.integers(0, 20), small_or_negative())),
    )


def unknown_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field the schema does not know."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


# -- the server under test ------------------------------------------------------------
ADMIN_TOKEN = "fuzz-admin-0123456789abcdef"
TEAM_TOKEN = "fuzz-team-0123456789abcdef"
TOKENS = {"tokens": [
    {"name": "admin", "token": ADMIN_TOKEN, "role": "admin"},
    {"name": "team", "token": TEAM_TOKEN, "job_prefixes": ["seed-", "fuzz-"]},
]}
Metadata = tuple[tuple[str, str | bytes], ...] | None
CREDENTIALS: list[Metadata] = [
    None,
    (("authorization", f"Bearer {ADMIN_TOKEN}"),),
    (("authorization", f"Bearer {TEAM_TOKEN}"),),
    (("authorization", "Bearer wrong"),),
    (("authorization", "Bearer "),),
    (("authorization", f"Basic {ADMIN_TOKEN}"),),
    (("authorization", f"bearer {TEAM_TOKEN}"),),
    (("authorization", f"Bearer {TEAM_TOKEN}"), ("authorization", f"Bearer {ADMIN_TOKEN}")),
    (("authorization-bin", b"\x00\xff"),),
]
BACKENDS = {  # examples per test: requests, unknown fields, garbage bytes
    "embedded": (250, 60, 80),
    "redis": (100, 20, 30),
    "embedded+auth": (120, 20, 30),
}


class _WithMetadata(grpc.UnaryUnaryClientInterceptor):
    """Adds fixed metadata (the admin token) to every call of a channel."""

    def __init__(self, metadata: Metadata) -> None:
        self.metadata = list(metadata or ())

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        details = details._replace(metadata=[*(details.metadata or ()), *self.metadata])
        return continuation(details, request)


class Fuzzed:
    """A running server; an admin stub to seed and inspect it, a plain channel for the
    fuzzed calls; and the seeded jobs' checkpoints."""

    def __init__(self, server: InProcessServer, backend: str) -> None:
        self.server = server
        self.backend = backend
        self.auth = backend.endswith("+auth")
        self.allowed = ALLOWED | ({grpc.StatusCode.UNAUTHENTICATED,
                                   grpc.StatusCode.PERMISSION_DENIED} if self.auth else set())
        self.channel = grpc.insecure_channel(server.target)
        self.default: Metadata = CREDENTIALS[1] if self.auth else None  # the admin token
        self.stub = pb_grpc.SchedulerServiceStub(
            grpc.intercept_channel(self.channel, _WithMetadata(self.default)))
        self.real_states: dict[str, str] = {}
        self.seed()
        for job_id in SEEDS:
            self.real_states[job_id] = self.stub.GetState(
                pb.GetStateRequest(job_id=job_id, iteration=10)).state_json

    def counts(self) -> tuple[int, int, int]:
        return BACKENDS[self.backend]

    def seed(self) -> None:
        """(Re)create the seeded jobs a previous request deleted; give them progress."""
        for job_id, spec in SEEDS.items():
            try:
                self.stub.GetJob(pb.GetJobRequest(job_id=job_id))
                continue
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            self.stub.AttachJob(pb.AttachJobRequest(job_id=job_id, spec=spec, world_size=4))
            request = pb.ReportProgressRequest(job_id=job_id, generation=1, rank=1,
                                               iteration=5)
            if spec.HasField("max_epochs"):
                request.epoch_end = 0
                request.has_metrics = True
                request.metrics["loss"] = 1.5
            self.stub.ReportProgress(request)

    def call(self, method: str, request: Message | bytes,
             metadata: Metadata) -> tuple[grpc.StatusCode, str]:
        """One call on the plain channel; bytes go out as they are (identity serializers)."""
        if isinstance(request, bytes):
            callable_ = self.channel.unary_unary(f"/{SERVICE}/{method}")
        else:
            message = METHODS[method]
            callable_ = self.channel.unary_unary(
                f"/{SERVICE}/{method}", request_serializer=type(request).SerializeToString,
                response_deserializer=getattr(pb, message.output_type.name).FromString)
        try:
            callable_(request, timeout=30, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""

    def snapshot(self) -> list[Any]:
        """Every job (ListJobs), and GetJob, GetState and history of the seeded ones."""
        jobs: list[Any] = []
        token = ""
        while True:
            page = self.stub.ListJobs(pb.ListJobsRequest(page_size=1000, page_token=token))
            jobs.extend(page.jobs)
            token = page.next_page_token
            if not token:
                break
        out: list[Any] = [jobs]
        for job_id in SEEDS:
            try:
                job = self.stub.GetJob(pb.GetJobRequest(job_id=job_id)).job
            except grpc.RpcError as exc:
                out.append(exc.code())
                continue
            state = self.stub.GetState(pb.GetStateRequest(job_id=job_id,
                                                          iteration=job.max_iters))
            history = self.stub.GetJobHistory(pb.GetJobHistoryRequest(job_id=job_id))
            payload = json.loads(json.loads(state.state_json)["payload"])
            payload.pop("saved_at")  # the time of this GetState, not stored state
            out += [job, payload, list(history.entries)]
        return out

    def check(self, method: str, request: Message | bytes, metadata: Metadata) -> None:
        """The call gets an allowed code; if refused, nothing stored changed."""
        before = self.snapshot()
        code, details = self.call(method, request, metadata)
        note(f"{method} -> {code.name}: {details[:300]}")
        assert code in self.allowed, f"{method} answered {code.name}: {details}"
        if code != grpc.StatusCode.OK:
            after = self.snapshot()
            assert after == before, f"refused {method} ({code.name}: {details}) changed state"

    def serving(self) -> bool:
        health = health_pb2_grpc.HealthStub(self.channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        self.channel.close()
        self.server.stop()


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def fuzzed(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    options: dict[str, Any] = {"plan_size": 16, "max_message_bytes": MAX_MESSAGE_BYTES}
    if request.param == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        redis_server.resume()
        if not redis_server.running:
            redis_server.start()
        client = redis.Redis.from_url(redis_server.url)
        client.flushall()
        client.close()
        options["redis_url"] = redis_server.url
    else:
        options["data_dir"] = tmp_path_factory.mktemp("fuzz")
    if request.param.endswith("+auth"):
        options["tokens_inline"] = json.dumps(TOKENS)
    fuzz = Fuzzed(InProcessServer(**options).start(), request.param)
    yield fuzz
    fuzz.close()


# No shrinking: it would take minutes over a server; a failure shows the request as found
# (its note), and each bug found is pinned down by a minimal test at the end.
FUZZ_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                     phases=(Phase.explicit, Phase.reuse, Phase.generate),
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.filter_too_much])


# -- the fuzz tests -----------------------------------------------------------------------
def run_examples(fuzz: Fuzzed, strategy: st.SearchStrategy[Any], count: int,
                 body: Callable[[Any], None]) -> None:
    @settings(max_examples=count, **FUZZ_SETTINGS)  # type: ignore[arg-type]
    @given(strategy)
    def one(example: Any) -> None:
        fuzz.seed()
        body(example)

    one()
    assert fuzz.serving(), "the server stopped serving"


def credentials(fuzz: Fuzzed) -> st.SearchStrategy[Metadata]:
    """With auth on: mostly the admin token, else any of the odd ones (or none)."""
    if not fuzz.auth:
        return st.just(None)
    return st.one_of(st.just(CREDENTIALS[1]), st.sampled_from(CREDENTIALS))


def test_fuzzed_requests_get_documented_codes_and_refusals_change_nothing(fuzzed: Fuzzed):
    strategy = st.tuples(requests(fuzzed.real_states), credentials(fuzzed))

    def body(example: tuple[tuple[str, Message], Metadata]) -> None:
        (method, request), metadata = example
        fuzzed.check(method, request, metadata)

    run_examples(fuzzed, strategy, fuzzed.counts()[0], body)


def test_unknown_fields_are_ignored_like_any_request(fuzzed: Fuzzed):
    strategy = st.tuples(requests(fuzzed.real_states), st.integers(100, 2**20),
                         st.binary(max_size=20))

    def body(example: tuple[tuple[str, Message], int, bytes]) -> None:
        (method, request), number, payload = example
        fuzzed.check(method, request.SerializeToString() + unknown_field(number, payload),
                     fuzzed.default)

    run_examples(fuzzed, strategy, fuzzed.counts()[1], body)


def test_oversized_requests_are_refused_and_change_nothing(fuzzed: Fuzzed):
    """Over ``max_message_bytes``: INVALID_ARGUMENT naming the limit; over gRPC's own
    receive limit (4x that): RESOURCE_EXHAUSTED."""
    spec = spec_proto(WARMUP_COSINE)
    for size in (MAX_MESSAGE_BYTES + 1, 3 * MAX_MESSAGE_BYTES, 5 * MAX_MESSAGE_BYTES):
        huge_json = pb.AttachJobRequest(job_id="fuzz-a", spec=spec)
        huge_json.spec.param_scheduler_json += " " * size
        huge_id = pb.GetJobRequest(job_id="x" * size)
        huge_metrics = pb.ReportProgressRequest(job_id="seed-plateau", generation=1,
                                                iteration=5, epoch_end=0, has_metrics=True)
        huge_metrics.metrics.update({f"m{i:07d}": 1.0 for i in range(size // 16)})
        for method, request in (("AttachJob", huge_json), ("GetJob", huge_id),
                                ("ReportProgress", huge_metrics)):
            before = fuzzed.snapshot()
            code, details = fuzzed.call(method, request, fuzzed.default)
            assert code in (grpc.StatusCode.INVALID_ARGUMENT,
                            grpc.StatusCode.RESOURCE_EXHAUSTED), (method, size, code, details)
            if size < 4 * MAX_MESSAGE_BYTES:
                assert "max_message_bytes" in details, details
            assert fuzzed.snapshot() == before
    assert fuzzed.serving()


def test_garbage_bytes_to_every_method_get_documented_codes(fuzzed: Fuzzed):
    strategy = st.tuples(st.sampled_from(sorted(METHODS)), st.binary(max_size=64),
                         credentials(fuzzed))
    run_examples(fuzzed, strategy, fuzzed.counts()[2],
                 lambda example: fuzzed.check(*example))


# -- the bugs the fuzzing found, each as a minimal example -------------------------------
@pytest.fixture
def channel(tmp_path: Path) -> Iterator[grpc.Channel]:
    server = InProcessServer(data_dir=tmp_path).start()
    channel = grpc.insecure_channel(server.target)
    try:
        yield channel
    finally:
        channel.close()
        server.stop()


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.SchedulerServiceStub:
    return pb_grpc.SchedulerServiceStub(channel)


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_undecodable_request_bytes_are_invalid_argument(channel: grpc.Channel):
    """Bytes that are not a protobuf message (here: a truncated varint) are the caller's
    error, not an UNKNOWN server failure."""
    raw = channel.unary_unary(f"/{SERVICE}/GetJob")
    code, details = code_of(lambda: raw(b"\xff"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)


@pytest.mark.parametrize("where", ["spec.param_scheduler_json", "state_json",
                                   "reschedule.param_scheduler_json"])
def test_deeply_nested_json_is_invalid_argument(stub: pb_grpc.SchedulerServiceStub, where: str):
    """JSON nested deeper than Python's recursion limit is refused like any bad JSON
    (json.loads raises RecursionError, not ValueError)."""
    deep = "[" * 100_000 + "]" * 100_000
    stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec_proto(WARMUP_COSINE)))
    calls = {
        "spec.param_scheduler_json": lambda: stub.AttachJob(pb.AttachJobRequest(
            job_id="k", spec=pb.JobSpec(param_scheduler_json=deep, max_iters=10))),
        "state_json": lambda: stub.LoadState(pb.LoadStateRequest(job_id="j", state_json=deep)),
        "reschedule.param_scheduler_json": lambda: stub.RescheduleJob(
            pb.RescheduleJobRequest(job_id="j", param_scheduler_json=deep)),
    }
    code, details = code_of(calls[where])
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert [j.job_id for j in stub.ListJobs(pb.ListJobsRequest()).jobs] == ["j"]


def test_cosine_with_a_denormal_t_max_is_refused_and_creates_nothing(
    stub: pb_grpc.SchedulerServiceStub,
):
    """T_max=1e-320 makes k / T_max overflow to inf and cos(inf) raise (MMEngine crashes
    the same way), so it must be refused up front; today the job is stored, then the
    plan fails with INTERNAL."""
    spec = spec_proto([dict(type="CosineAnnealingLR", T_max=1e-320, by_epoch=False)],
                      [{"lr": 0.1}], max_epochs=None, max_iters=10)
    code, details = code_of(lambda: stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "T_max" in details, (code, details)
    assert not stub.ListJobs(pb.ListJobsRequest()).jobs
    code, details = code_of(lambda: stub.PreviewSchedule(pb.PreviewScheduleRequest(spec=spec)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)


def test_preview_starting_past_the_end_is_invalid_argument(stub: pb_grpc.SchedulerServiceStub):
    """A preview window that starts after the job's last iteration is the caller's error
    (GetValues says so with INVALID_ARGUMENT); today the engine's ValueError escapes as
    INTERNAL."""
    spec = spec_proto([dict(type="ConstantLR")], [{"lr": 0.1}], max_epochs=None, max_iters=1)
    code, details = code_of(lambda: stub.PreviewSchedule(pb.PreviewScheduleRequest(
        spec=spec, start_iteration=2, stop_iteration=3)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)


async def _values_of_a_long_job() -> tuple[list[tuple[int, int, bool]], list[float], list[float]]:
    """A 5,000-iteration job over a budget of 1,000 cells: every page of GetValues(0,
    0), as (start, rows, has a next token), the values joined and the one-piece answer."""
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedJobStore(Path(tmp))
        try:
            service = SchedulerService(store, max_values_cells=1000)
            spec = {"param_scheduler": [{"type": "CosineAnnealingLR", "by_epoch": False}],
                    "initial_values": [{"lr": 0.1}], "max_iters": 5000}
            await service.attach("long", spec)
            pages, joined, tokens = [], [], [""]
            while True:
                page = await service.values("long", 0, 0, page_token=tokens[-1])
                pages.append((page.start, len(page.values), bool(page.next_page_token)))
                joined += [row[0]["lr"] for row in page.values]
                if not page.next_page_token:
                    break
                tokens.append(page.next_page_token)
            with pytest.raises(InvalidArgument) as info:  # a token is bound to its request
                await service.values("long", 1, 0, page_token=tokens[1])
            assert info.value.field == "page_token"
            service.max_values_cells = 10**9
            whole = await service.values("long", 0, 0)
            return pages, joined, [row[0]["lr"] for row in whole.values]
        finally:
            await store.close()


def test_get_values_is_bounded_like_preview():
    """GetValues(start=0, stop=0) once computed and held the whole job at once (for a
    job of 10^9 iterations, hours and all the server's memory). Now a page holds what
    ``max_values_cells`` allows and says where to go on; the pages join to the whole."""
    pages, joined, whole = asyncio.run(_values_of_a_long_job())
    first_start, first_rows, more = pages[0]
    assert (first_start, more) == (0, True) and 0 < first_rows <= 1000
    assert all(rows <= 1000 for _, rows, _ in pages) and not pages[-1][2]
    starts = [start for start, _, _ in pages]
    assert starts == [sum(rows for _, rows, _ in pages[:i]) for i in range(len(pages))]
    assert len(joined) == 5001 and joined == whole
