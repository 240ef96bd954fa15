"""Bounded work per request: GetValues and PreviewSchedule come in pages within the
server's cost budget (``--max-values-cells``), with a stride for plots; over-budget
requests are RESOURCE_EXHAUSTED, garbled page tokens INVALID_ARGUMENT, and the work
stops at the caller's deadline. A job-scoped ListJobs reads only the token's jobs.

One in-process server (real gRPC, embedded store) serves the module; tests that change
its budget put it back (``budget`` fixture).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import math
import random
import re
import shutil
import tempfile
import time
import zlib
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import paramsched

from paramsched import Client
from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc
from paramsched.cli import curves as cli_curves
from paramsched.server.app import make_parser
from paramsched.server.auth import Principal, current_principal
from paramsched.server.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from paramsched.server.grpc.servicer import spec_to_dict
from paramsched.server.schedules.timeline import Timeline
from paramsched.server.service import SchedulerService
from paramsched.server.service import pages as server_pages
from paramsched.server.service.inputs import parse_spec
from paramsched.server.store.embedded import EmbeddedJobStore

from grpc_harness import InProcessServer
from test_service_grpc import GROUPS, PLATEAU, WARMUP_COSINE, decode, engine_values, spec_proto

EPOCHS = 60  # WARMUP_COSINE over 60 epochs of 5: iterations 0..300
LONG = spec_proto(WARMUP_COSINE, max_epochs=EPOCHS)
PLATEAU_SPEC = spec_proto(PLATEAU, max_epochs=12)  # decisions given for epochs 0..4 only
WIDTH = len(GROUPS) * 2  # two groups x (lr, momentum)
HUGE = 10**9
SLOW = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    started = InProcessServer(data_dir=tmp_path_factory.mktemp("paging"),
                              max_values_cells=HUGE).start()
    with grpc.insecure_channel(started.target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        stub.AttachJob(pb.AttachJobRequest(job_id="long", spec=LONG, world_size=1))
        stub.AttachJob(pb.AttachJobRequest(job_id="plateau", spec=PLATEAU_SPEC, world_size=1))
        for epoch in range(5):
            stub.ReportProgress(pb.ReportProgressRequest(
                job_id="plateau", generation=1, rank=0, iteration=5 * (epoch + 1),
                epoch_end=epoch, metrics={"loss": 1.0 / (epoch % 3 + 1)}, has_metrics=True))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def stub(server: InProcessServer) -> Iterator[pb_grpc.SchedulerServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.SchedulerServiceStub(channel)


@pytest.fixture
def service(server: InProcessServer) -> Iterator[SchedulerService]:
    assert server.parts is not None
    yield server.parts.service
    server.parts.service.max_values_cells = HUGE


@pytest.fixture(scope="module")
def one_shot(server: InProcessServer, stub: pb_grpc.SchedulerServiceStub) -> dict[str, Any]:
    """Each job's and preview's whole answer in one page (the budget is huge here)."""
    out: dict[str, Any] = {}
    for job in ("long", "plateau"):
        reply = stub.GetValues(pb.GetValuesRequest(job_id=job))
        assert not reply.next_page_token
        out[job] = (decode(reply.plan), reply.plan.waits_for_epoch)
    reply = stub.PreviewSchedule(pb.PreviewScheduleRequest(spec=LONG))
    out["preview"] = (decode(reply.plan), None)
    return out


def bits(rows: list[list[dict[str, float]]]) -> list[list[list[tuple[str, str]]]]:
    """Rows with every float as its exact bits (``float.hex``)."""
    return [[sorted((k, v.hex()) for k, v in group.items()) for group in row] for row in rows]


def all_pages(call: Callable[[Any], Any], request: Any) -> list[Any]:
    replies = []
    while True:
        reply = call(request)
        replies.append(reply)
        if not reply.next_page_token:
            return replies
        request.page_token = reply.next_page_token


def token_fields(token: str) -> dict[str, Any]:
    """What a page token holds (its format is the server's, tested here only)."""
    head = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).rpartition(b".")[0]
    if head.startswith(server_pages._COMPRESSED):
        head = zlib.decompress(head[len(server_pages._COMPRESSED):])
    data: dict[str, Any] = json.loads(head)
    return data


def carries_state(token: str) -> bool:
    return bool(token) and "k" in token_fields(token)


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def violated_fields(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    fields: list[str] = []
    for detail in status.details if status is not None else ():
        violations = error_details_pb2.BadRequest()
        assert detail.Unpack(violations)
        fields += [v.field for v in violations.field_violations]
    return fields


def check_pages(replies: list[Any], start: int, stride: int, budget: int,
                expected: list[list[dict[str, float]]]) -> None:
    """The pages follow each other on the stride's grid, each within the budget, and
    joined they are ``expected`` bit for bit."""
    rows: list[list[dict[str, float]]] = []
    at = start
    for reply in replies:
        plan = reply.plan
        assert plan.start_iteration == at
        assert plan.stride == (stride if stride > 1 else 0)
        assert plan.num_iterations * plan.num_groups * len(plan.params) <= budget
        rows += decode(plan)
        at += plan.num_iterations * stride
    assert bits(rows) == bits(expected)
    if len(replies) > 1:  # a page is cut only where the next point no longer fits
        assert all(r.plan.num_iterations >= 1 for r in replies)


# -- pages join to the one-shot answer ------------------------------------------------
@SLOW
@given(job=st.sampled_from(["long", "plateau"]), data=st.data())
def test_pages_of_a_job_join_to_the_one_shot_answer_bit_for_bit(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService,
        one_shot: dict[str, Any], job: str, data: st.DataObject):
    full, waits = one_shot[job]
    last = 300 if job == "long" else 60
    start = data.draw(st.integers(0, last), label="start")
    stop = data.draw(st.integers(start + 1, last + 1), label="stop")
    stride = data.draw(st.integers(1, 40), label="stride")
    # At least a replay across the whole job plus one row, so no page is refused.
    service.max_values_cells = budget = data.draw(
        st.integers(last + 1 + WIDTH, last + 1 + 60 * WIDTH), label="budget")
    replies = all_pages(stub.GetValues, pb.GetValuesRequest(
        job_id=job, start_iteration=start, stop_iteration=stop, stride=stride))
    expected = [full[t] for t in range(start, stop, stride) if t < len(full)]
    check_pages(replies, start, stride, budget, expected)
    points = len(range(start, stop, stride))
    if len(expected) == points:
        assert not replies[-1].plan.HasField("waits_for_epoch")
    elif stride == 1:  # the values stop at the pending decision, as in one piece
        assert replies[-1].plan.waits_for_epoch == waits == 5
    if len(expected) * len(GROUPS) * (2 if job == "long" else 1) > budget:
        assert len(replies) > 1


@SLOW
@given(data=st.data())
def test_pages_of_a_preview_join_to_the_local_engine_bit_for_bit(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService,
        one_shot: dict[str, Any], data: st.DataObject):
    truth = engine_values(WARMUP_COSINE, max_epochs=EPOCHS)
    assert bits(one_shot["preview"][0]) == bits(truth)
    start = data.draw(st.integers(0, 300), label="start")
    stop = data.draw(st.integers(start + 1, 301), label="stop")
    stride = data.draw(st.integers(1, 40), label="stride")
    service.max_values_cells = budget = data.draw(
        st.integers(301 + WIDTH, 301 + 60 * WIDTH), label="budget")
    replies = all_pages(stub.PreviewSchedule, pb.PreviewScheduleRequest(
        spec=LONG, start_iteration=start, stop_iteration=stop, stride=stride))
    check_pages(replies, start, stride, budget, truth[start:stop:stride])


def test_a_preview_page_continues_from_the_state_its_token_carries(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService,
        one_shot: dict[str, Any], monkeypatch: pytest.MonkeyPatch):
    """A preview stores nothing: its token carries the replay state at the page's last
    point, so every page replays one iteration (not from 0) and holds as many rows as
    the first. Without it (a state too large to carry) a page replays from 0."""
    service.max_values_cells = 400
    replies = all_pages(stub.PreviewSchedule, pb.PreviewScheduleRequest(spec=LONG))
    assert [r.plan.num_iterations for r in replies] == [100, 99, 99, 3]  # 1 + (400-1-4)//4
    assert all(carries_state(r.next_page_token) for r in replies[:-1])
    check_pages(replies, 0, 1, 400, one_shot["preview"][0])
    monkeypatch.setattr(server_pages, "MAX_CARRIED_LENGTH", 0)
    replies = all_pages(stub.PreviewSchedule, pb.PreviewScheduleRequest(spec=LONG))
    assert not any(carries_state(r.next_page_token) for r in replies)
    for reply in replies:
        assert reply.plan.num_iterations * WIDTH + reply.plan.start_iteration <= 400
    assert [r.plan.num_iterations for r in replies[:3]] == [100, 75, 56]
    check_pages(replies, 0, 1, 400, one_shot["preview"][0])


def test_a_long_preview_is_paged_not_refused(stub: pb_grpc.SchedulerServiceStub,
                                             service: SchedulerService):
    """What max_preview_iterations refused (more than 10^6 iterations) is a first page."""
    spec = spec_proto([dict(type="CosineAnnealingLR", by_epoch=False)], epoch_length=5,
                      max_epochs=None, max_iters=3_000_000)
    service.max_values_cells = 4000
    reply = stub.PreviewSchedule(pb.PreviewScheduleRequest(spec=spec), timeout=30)
    assert reply.plan.num_iterations == 2000 and reply.next_page_token  # lr, 1 param x 2
    again = stub.PreviewSchedule(pb.PreviewScheduleRequest(
        spec=spec, page_token=reply.next_page_token), timeout=30)
    # (it continues from the state its token carries: 1 iteration of replay, not 2000)
    assert again.plan.start_iteration == 2000 and again.plan.num_iterations == 1999


# -- long previews: each token carries the replay state, so every page is O(page) ------
def flat_truth(spec: pb.JobSpec, decisions: Any = None,
               stop: int | None = None) -> array:
    """The engine's values in one pass from iteration 0 (one replay state advanced
    iteration by iteration), flattened as a plan holds them (groups x params)."""
    built = parse_spec(spec_to_dict(spec))  # as the server reads it
    timeline = Timeline(built)
    state = timeline.state_at(0, decisions or {})
    out = array("d")
    last = built.max_iters if stop is None else stop - 1
    for t in range(last + 1):
        if t:
            timeline.replayer.advance(state, t, decisions or {})
        row = timeline.replayer.group_values(state)
        out.extend(group[p] for group in row for p in built.params)
    return out


def joined(replies: list[Any]) -> array:
    out = array("d")
    for reply in replies:
        out.extend(reply.plan.values)
    return out


MILLION = spec_proto([dict(type="LinearLR", start_factor=0.01, by_epoch=False, end=1000),
                      dict(type="CosineAnnealingLR", by_epoch=False, begin=1000, eta_min=1e-5),
                      dict(type="CosineAnnealingMomentum", by_epoch=False, eta_min=0.5)],
                     GROUPS[:1], epoch_length=None, max_epochs=None, max_iters=10**6)


def test_a_preview_of_a_million_iterations_completes_page_by_page_bit_for_bit(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService):
    """Stride 1 over 10^6 iterations with a small budget: what replayed from 0 on every
    page was refused from about the budget's iteration on; now every page holds about
    a budget's worth of rows and the joined pages are the engine's one pass."""
    service.max_values_cells = budget = 40_000
    began = time.monotonic()
    replies = all_pages(lambda r: stub.PreviewSchedule(r, timeout=30),
                        pb.PreviewScheduleRequest(spec=MILLION))
    took = time.monotonic() - began
    rows = (budget - 1 - 2) // 2 + 1  # lr and momentum; a later page replays 1 iteration
    assert [r.plan.num_iterations for r in replies[1:-1]] == [rows] * (len(replies) - 2)
    assert sum(r.plan.num_iterations for r in replies) == 10**6 + 1
    assert all(len(r.next_page_token) <= 1024 for r in replies)  # a state of 2 values
    assert joined(replies).tobytes() == flat_truth(MILLION).tobytes()
    assert took < 60


CONFIG_POOL = [
    [dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=37),
     dict(type="CosineAnnealingLR", by_epoch=False, begin=37)],
    [dict(type="OneCycleLR", eta_max=0.5, by_epoch=False, total_steps=None)],
    [dict(type="MultiStepLR", milestones=[100, 900, 3000], gamma=0.3, by_epoch=False),
     dict(type="StepMomentum", step_size=777, gamma=0.9, by_epoch=False)],
    [dict(type="PolyLR", power=2.0, by_epoch=False, eta_min=0.001),
     dict(type="ExponentialMomentum", gamma=0.9999, by_epoch=False)],
]


@SLOW
@given(configs=st.sampled_from(CONFIG_POOL), length=st.integers(50, 6000),
       data=st.data())
def test_carried_states_join_random_previews_bit_for_bit(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService,
        configs: list[dict[str, Any]], length: int, data: st.DataObject):
    spec = spec_proto(configs, epoch_length=None, max_epochs=None, max_iters=length)
    truth = flat_truth(spec)
    width = len(GROUPS) * len(parse_spec(spec_to_dict(spec)).params)
    start = data.draw(st.integers(0, min(length, 200)), label="start")
    stop = data.draw(st.integers(start + 1, length + 1), label="stop")
    stride = data.draw(st.integers(1, 60), label="stride")
    service.max_values_cells = budget = data.draw(
        st.integers(start + stride + width, start + stride + 80 * width), label="budget")
    replies = all_pages(stub.PreviewSchedule, pb.PreviewScheduleRequest(
        spec=spec, start_iteration=start, stop_iteration=stop, stride=stride))
    expected = array("d")
    for t in range(start, stop, stride):
        expected.extend(truth[t * width:(t + 1) * width])
    assert joined(replies).tobytes() == expected.tobytes()
    at = start
    for reply in replies:
        assert reply.plan.start_iteration == at
        assert reply.plan.num_iterations * width <= budget
        at += reply.plan.num_iterations * stride
        if reply is not replies[0]:  # it replayed `stride` iterations, not `at`
            assert reply.plan.num_iterations == min(
                1 + (budget - stride - width) // (width + stride - 1),
                len(range(reply.plan.start_iteration, stop, stride)))


def test_carried_states_follow_the_decisions_of_a_plateau_preview(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService):
    """The state a token carries holds the plateau's progress: the pages of a preview
    with decisions join to the engine's one pass with them, and stop where the next
    decision is missing, like the one-piece answer."""
    decisions = {e: {"loss": 1.0 / (e % 3 + 1)} for e in range(8)}
    service.max_values_cells = 10 * WIDTH // 2 + 1  # PLATEAU schedules lr only: width 2
    replies = all_pages(stub.PreviewSchedule, pb.PreviewScheduleRequest(
        spec=PLATEAU_SPEC, decisions={e: pb.MetricsDecision(metrics=m, has_metrics=True)
                                      for e, m in decisions.items()}))
    assert len(replies) > 3 and all(carries_state(r.next_page_token) for r in replies[:-1])
    assert replies[-1].plan.waits_for_epoch == 8
    assert joined(replies).tobytes() == flat_truth(PLATEAU_SPEC, decisions, stop=45).tobytes()


def carried_token(stub: pb_grpc.SchedulerServiceStub, service: SchedulerService
                  ) -> tuple[pb.PreviewScheduleRequest, str, dict[str, Any]]:
    service.max_values_cells = 20 * WIDTH
    request = pb.PreviewScheduleRequest(spec=LONG, stride=3)
    token = stub.PreviewSchedule(request).next_page_token
    fields = token_fields(token)
    assert fields["k"]["iteration"] == fields["n"] - 3
    return request, token, fields


def forge(fields: dict[str, Any]) -> str:
    """A token as the server writes it, with the checksum right (it is no secret)."""
    return server_pages.encode_token(fields["r"], fields["s"], fields["n"], fields["k"])


def deep_replace(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    data = json.loads(json.dumps(data))
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


DELETE = object()
FORGERIES = [
    (("iteration",), 3), (("iteration",), -1), (("iteration",), "57"), (("iteration",), 10**30),
    (("states",), {}), (("states",), []), (("states", "1"), {}), (("states", "0"), DELETE),
    (("states", "0", "iteration"), 0), (("states", "0", "values"), {}),
    (("states", "0", "values", "lr"), [0.1]), (("states", "0", "values", "lr"), ["x", 1]),
    (("states", "0", "values", "lr"), [10**400, 1.0]),
    (("states", "0", "last_step"), [1]), (("states", "0", "last_step"), [-5, 0, 0]),
    (("states", "0", "global_step"), None), (("states", "0", "plateau"), {"0": [1, 2, 3]}),
    (("states", "0", "float32"), {"lr": [True]}), (("states", "0", "extra"), 1),
    (("extra",), 1),
]


@pytest.mark.parametrize("path,value", FORGERIES)
def test_a_forged_carried_state_is_invalid_argument_naming_page_token(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService,
        path: tuple[Any, ...], value: Any):
    request, _, fields = carried_token(stub, service)
    fields["k"] = deep_replace(fields["k"], path, value)
    request.page_token = forge(fields)
    error = refused(lambda: stub.PreviewSchedule(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert violated_fields(error) == ["page_token"]


NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(-(2**60), 2**60), st.sampled_from([0, -1, 1, 10**400]))


@SLOW
@given(data=st.data())
def test_a_carried_state_with_any_numbers_is_answered_or_refused_never_a_crash(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService, data: st.DataObject):
    """The plateau preview's state with its numbers replaced at random: the reply is
    values (the forger's own) or INVALID_ARGUMENT, promptly; never INTERNAL or a hang."""
    decisions = {e: pb.MetricsDecision(metrics={"loss": 1.0 / (e % 3 + 1)}, has_metrics=True)
                 for e in range(8)}
    service.max_values_cells = 12
    request = pb.PreviewScheduleRequest(spec=PLATEAU_SPEC, decisions=decisions)
    fields = token_fields(stub.PreviewSchedule(request).next_page_token)
    state = fields["k"]["states"]["0"]
    for name in ("last_step", "global_step"):
        state[name] = [data.draw(NUMBERS, label=name) for _ in state[name]]
    state["plateau"] = {k: [data.draw(NUMBERS, label="plateau") for _ in v]
                        for k, v in state["plateau"].items()}
    state["values"] = {k: [data.draw(NUMBERS, label="values") for _ in v]
                       for k, v in state["values"].items()}
    request.page_token = forge(fields)
    try:
        reply = stub.PreviewSchedule(request, timeout=10)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    else:
        assert reply.plan.start_iteration == fields["n"]


def test_a_carried_state_is_only_the_forgers_preview(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService):
    """A state with other numbers but the right shape computes on from them, in the
    forger's own reply: nothing is stored, the honest token still gives the truth."""
    request, token, fields = carried_token(stub, service)
    honest = stub.PreviewSchedule(pb.PreviewScheduleRequest(spec=LONG, stride=3,
                                                            page_token=token))
    fields["k"] = deep_replace(fields["k"], ("states", "0", "values", "lr"), [0.5, 0.5])
    request.page_token = forge(fields)
    forged = stub.PreviewSchedule(request)
    assert list(forged.plan.values) != list(honest.plan.values)
    again = stub.PreviewSchedule(pb.PreviewScheduleRequest(spec=LONG, stride=3,
                                                           page_token=token))
    assert list(again.plan.values) == list(honest.plan.values)
    truth, expected = flat_truth(LONG), array("d")
    plan = honest.plan
    for t in range(plan.start_iteration, plan.start_iteration + 3 * plan.num_iterations, 3):
        expected.extend(truth[t * WIDTH:(t + 1) * WIDTH])
    assert array("d", plan.values).tobytes() == expected.tobytes()


@SLOW
@given(position=st.integers(0, 10**6), letter=st.sampled_from("AQgw-_09zZ"))
def test_a_carried_token_with_any_character_changed_is_refused(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService, position: int,
        letter: str):
    request, token, _ = carried_token(stub, service)
    at = position % len(token)
    request.page_token = token[:at] + letter + token[at + 1:]
    if request.page_token == token:
        return
    error = refused(lambda: stub.PreviewSchedule(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert violated_fields(error) == ["page_token"]


def test_a_token_that_inflates_past_its_limit_is_refused_at_once(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService):
    request, _, fields = carried_token(stub, service)
    body = json.dumps({**fields, "pad": " " * (20 << 20)}).encode()  # 20 MiB of spaces
    bomb = server_pages._COMPRESSED + zlib.compress(body, 9)
    request.page_token = server_pages._encoded(bomb)  # (its checksum right: it inflates)
    assert len(request.page_token) <= server_pages.MAX_TOKEN_LENGTH
    began = time.monotonic()
    error = refused(lambda: stub.PreviewSchedule(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["page_token"] and time.monotonic() - began < 2


COLD_SPEC = {"param_scheduler": [{"type": "LinearLR", "start_factor": 0.1, "by_epoch": False,
                                   "end": 50},
                                  {"type": "CosineAnnealingLR", "by_epoch": False, "begin": 50}],
             "initial_values": [{"lr": 0.1, "momentum": 0.9}], "max_iters": 60_000}


def test_a_cold_replica_continues_a_jobs_pages_from_the_state_the_token_carries(
        tmp_path: Path):
    """Two servers on one store, the pages alternating between them: the one that did
    not serve the last page holds no state near the next one (its replay from 0 would
    be over the budget) and continues from the state the token carries, in a schedule
    of its own. A forged state changes only that reply, never the job's plans; one
    that does not fit is INVALID_ARGUMENT on page_token."""
    truth = [row[0]["lr"] for row in Timeline(parse_spec(COLD_SPEC)).values_range(
        0, 60_001, {})]

    async def scenario() -> None:
        stores = [EmbeddedJobStore(tmp_path), EmbeddedJobStore(tmp_path)]
        a, b = (SchedulerService(store, max_values_cells=3000) for store in stores)
        try:
            await a.attach("cold", COLD_SPEC, world_size=1)
            joined: list[float] = []
            token, tokens, servers = "", [], [a, b]
            while True:
                page = await servers[len(tokens) % 2].values("cold", 0, 0, page_token=token)
                joined += [row[0]["lr"] for row in page.values]
                if not page.next_page_token:
                    break
                token = page.next_page_token
                tokens.append(token)
            assert joined == truth and len(tokens) == 20  # 3000 cells: 2999 rows a page
            fields = token_fields(tokens[3])  # page 5, on b
            assert fields["k"]["iteration"] == fields["n"] - 1
            with pytest.raises(ResourceExhausted):  # what the state saves b
                await b.values("cold", 0, 0, page_token=server_pages.encode_token(
                    fields["r"], fields["s"], fields["n"]))
            forged = json.loads(json.dumps(fields["k"]))
            forged["states"]["0"]["values"]["lr"] = [5.0]
            page = await b.values("cold", 0, 0, page_token=server_pages.encode_token(
                fields["r"], fields["s"], fields["n"], forged))
            assert page.start == fields["n"] and page.values[0][0]["lr"] != truth[page.start]
            malformed = json.loads(json.dumps(forged))
            malformed["states"]["0"]["last_step"] = [1]
            with pytest.raises(InvalidArgument) as info:
                await b.values("cold", 0, 0, page_token=server_pages.encode_token(
                    fields["r"], fields["s"], fields["n"], malformed))
            assert info.value.field == "page_token"
            # The job's schedule on b (its ranks' plans) never saw the forged state: with
            # the budget for it, b replays there from 0 and gets the truth.
            b.max_values_cells = 10**6
            plan = await b.values("cold", page.start, page.start + 10)
            assert [row[0]["lr"] for row in plan.values] == truth[page.start:page.start + 10]
        finally:
            for store in stores:
                await store.close()

    asyncio.run(scenario())


def test_a_wide_schedule_carries_a_state_or_none_within_the_token_limit(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService):
    """256 groups x 8 params: the carried state stays under MAX_CARRIED_LENGTH (or the
    token carries none and the next page replays); either way the pages join."""
    rng = random.Random(7)
    groups = [{f"p{j}": rng.random() for j in range(7)} | {"lr": rng.random()}
              for _ in range(256)]
    configs = [dict(type="CosineAnnealingParamScheduler", param_name=f"p{j}",
                    by_epoch=False, eta_min=rng.random()) for j in range(7)]
    configs.append(dict(type="CosineAnnealingLR", by_epoch=False))
    spec = spec_proto(configs, groups, epoch_length=None, max_epochs=None, max_iters=40)
    width = 256 * 8
    service.max_values_cells = 5 * width + 40
    replies = all_pages(stub.PreviewSchedule, pb.PreviewScheduleRequest(spec=spec))
    assert len(replies) > 3
    for reply in replies[:-1]:
        assert 0 < len(reply.next_page_token) <= server_pages.MAX_CARRIED_LENGTH
    truth = flat_truth(spec)
    assert joined(replies).tobytes() == truth.tobytes()


# -- strides ---------------------------------------------------------------------------
def test_a_stride_reads_every_kth_iteration_and_says_so(stub: pb_grpc.SchedulerServiceStub,
                                                        one_shot: dict[str, Any]):
    reply = stub.GetValues(pb.GetValuesRequest(job_id="long", start_iteration=3, stride=50))
    assert (reply.plan.start_iteration, reply.plan.stride, reply.plan.num_iterations) == (
        3, 50, 6)  # 3, 53, ..., 253
    assert bits(decode(reply.plan)) == bits(one_shot["long"][0][3::50])
    plain = stub.GetValues(pb.GetValuesRequest(job_id="long", start_iteration=3,
                                               stop_iteration=5))
    assert plain.plan.stride == 0 and plain.plan.num_iterations == 2  # old clients: as before


def test_a_stride_stops_where_a_decision_is_pending(stub: pb_grpc.SchedulerServiceStub):
    """Decisions cover epochs 0..4, so values exist up to iteration 29: a stride of 7
    from 2 gets 2, 9, 16, 23 and waits for epoch 5, like the unstrided values."""
    reply = stub.GetValues(pb.GetValuesRequest(job_id="plateau", start_iteration=2, stride=7))
    assert reply.plan.num_iterations == 4 and reply.plan.waits_for_epoch == 5
    assert not reply.next_page_token


def test_pages_of_a_job_with_validation_points_stop_at_the_pending_one(
        stub: pb_grpc.SchedulerServiceStub):
    """An iteration-based job validating every 10 iterations: values exist up to 9 until
    decision 0 comes; a stride or a start past it still says which decision it waits on."""
    configs = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=4),
               dict(type="ReduceOnPlateauLR", monitor="loss", patience=0, factor=0.5)]
    spec = spec_proto(configs, epoch_length=None, max_epochs=None, max_iters=40)
    spec.val_interval = 10
    stub.AttachJob(pb.AttachJobRequest(job_id="validating", spec=spec, world_size=1))

    def page(**fields: Any) -> tuple[list[int], int | None, str]:
        reply = stub.GetValues(pb.GetValuesRequest(job_id="validating", **fields))
        plan = reply.plan
        points = list(range(plan.start_iteration, plan.start_iteration + plan.num_iterations
                            * max(1, plan.stride), max(1, plan.stride)))
        waits = plan.waits_for_epoch if plan.HasField("waits_for_epoch") else None
        return points, waits, reply.next_page_token

    assert page() == (list(range(10)), 0, "")
    assert page(start_iteration=1, stride=3) == ([1, 4, 7], 0, "")
    assert page(stride=30) == ([0], 0, "")  # 30 waits: on the decision after 10
    assert page(start_iteration=15) == ([], 0, "")
    stub.ReportProgress(pb.ReportProgressRequest(
        job_id="validating", generation=1, rank=0, iteration=10, validation_at=10,
        metrics={"loss": 1.0}, has_metrics=True))
    assert page(start_iteration=1, stride=3) == ([1, 4, 7, 10, 13, 16, 19], 1, "")


@pytest.mark.parametrize("stride", [-1, -50])
def test_a_negative_stride_is_invalid_argument_naming_stride(
        stub: pb_grpc.SchedulerServiceStub, stride: int):
    error = refused(lambda: stub.GetValues(pb.GetValuesRequest(job_id="long", stride=stride)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["stride"]
    error = refused(lambda: stub.PreviewSchedule(pb.PreviewScheduleRequest(spec=LONG,
                                                                           stride=stride)))
    assert violated_fields(error) == ["stride"]


# -- page tokens -------------------------------------------------------------------------
def first_token(stub: pb_grpc.SchedulerServiceStub, service: SchedulerService,
                **fields: Any) -> str:
    service.max_values_cells = 20 * WIDTH  # 20 rows from iteration 0 with no stride
    reply = stub.GetValues(pb.GetValuesRequest(job_id="long", **fields))
    assert reply.next_page_token
    return str(reply.next_page_token)


@SLOW
@given(garbage=st.one_of(
    st.text(min_size=1, max_size=80),
    st.binary(min_size=1, max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    st.integers(0, 10**6).map(lambda n: base64.urlsafe_b64encode(json.dumps(
        {"v": 1, "r": "x", "s": "y", "n": n}).encode()).decode())))
def test_a_garbled_page_token_is_invalid_argument_naming_page_token(
        stub: pb_grpc.SchedulerServiceStub, garbage: str):
    for call in (lambda: stub.GetValues(pb.GetValuesRequest(job_id="long", page_token=garbage)),
                 lambda: stub.PreviewSchedule(pb.PreviewScheduleRequest(spec=LONG,
                                                                        page_token=garbage))):
        error = refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(error) == ["page_token"]


@SLOW
@given(position=st.integers(0, 10**6), letter=st.sampled_from("AQgw-_09zZ"))
def test_a_token_with_any_character_changed_is_refused(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService, position: int,
        letter: str):
    token = first_token(stub, service)
    at = position % len(token)
    edited = token[:at] + letter + token[at + 1:]
    if edited == token:
        return
    error = refused(lambda: stub.GetValues(pb.GetValuesRequest(job_id="long",
                                                               page_token=edited)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert violated_fields(error) == ["page_token"]


def test_no_other_spelling_of_a_carried_state_token_passes(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService):
    """Deflate ignores the spare bits of its last byte and base64 those of its last
    character: every change near a compressed token's end is refused all the same."""
    import base64

    token = first_token(stub, service)
    assert base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).startswith(b"\x00z")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for at in range(len(token) - 40, len(token)):
        for letter in alphabet:
            if letter == token[at]:
                continue
            edited = token[:at] + letter + token[at + 1:]
            error = refused(lambda edited=edited: stub.GetValues(pb.GetValuesRequest(
                job_id="long", page_token=edited)))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (at, letter)


def test_a_token_works_only_for_the_request_it_came_from(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService):
    token = first_token(stub, service, stride=2)
    for other in (pb.GetValuesRequest(job_id="long", stride=3, page_token=token),
                  pb.GetValuesRequest(job_id="long", start_iteration=1, stride=2,
                                      page_token=token),
                  pb.GetValuesRequest(job_id="plateau", stride=2, page_token=token)):
        error = refused(lambda other=other: stub.GetValues(other))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(error) == ["page_token"] and "another request" in error.details()
    error = refused(lambda: stub.PreviewSchedule(pb.PreviewScheduleRequest(
        spec=LONG, stride=2, page_token=token)))
    assert violated_fields(error) == ["page_token"]
    same = stub.GetValues(pb.GetValuesRequest(job_id="long", stride=2, page_token=token))
    assert same.plan.start_iteration == 2 * (1 + (20 * WIDTH - WIDTH) // (WIDTH + 1)) == 32


def test_a_token_of_a_job_changed_since_is_stale_and_the_client_starts_over(
        server: InProcessServer, stub: pb_grpc.SchedulerServiceStub, service: SchedulerService):
    stub.AttachJob(pb.AttachJobRequest(job_id="changing", spec=LONG, world_size=1))
    service.max_values_cells = 300 + 10 * WIDTH
    reply = stub.GetValues(pb.GetValuesRequest(job_id="changing"))
    with Client(server.target, wait_timeout=10.0) as client:
        result = client.set("changing", "lr", 0.05, from_iteration=280, force=True)
        assert result.applied
        error = refused(lambda: stub.GetValues(pb.GetValuesRequest(
            job_id="changing", page_token=reply.next_page_token)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(error) == ["page_token"] and "stale" in error.details()
        rows = client.get_values("changing")  # every page of one state of the job
    assert [r[0]["lr"] for r in rows[280:]] == [0.05] * 21
    service.max_values_cells = HUGE
    assert bits(rows) == bits(decode(stub.GetValues(pb.GetValuesRequest(
        job_id="changing")).plan))


# -- the budget ------------------------------------------------------------------------
def test_a_row_over_the_budget_is_resource_exhausted_naming_it(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService):
    service.max_values_cells = WIDTH - 1
    error = refused(lambda: stub.GetValues(pb.GetValuesRequest(job_id="long")))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_values_cells=3" in error.details() and "--max-values-cells" in error.details()


def test_a_far_preview_is_resource_exhausted_naming_the_budget(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService):
    service.max_values_cells = 200
    error = refused(lambda: stub.PreviewSchedule(pb.PreviewScheduleRequest(
        spec=LONG, start_iteration=250)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "250 iterations of replay" in error.details()
    assert "replays from iteration 0" in error.details()
    # 0, 30, ..., 300: each point costs its 4 values and the 29 iterations replayed since
    # the last one, so the first page holds 1 + (200 - 4) // 33 = 6 of them; the next
    # continues from the state at 150 its token carries: 30 iterations of replay to 180,
    # then 180 .. 300 (5 points, 6 would fit).
    replies = all_pages(stub.PreviewSchedule, pb.PreviewScheduleRequest(spec=LONG, stride=30))
    assert [(r.plan.start_iteration, r.plan.num_iterations) for r in replies] == [
        (0, 6), (180, 5)]


def test_a_stride_pays_for_the_iterations_replayed_between_its_points(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService):
    """A stride of 10^6 over a 10^7-iteration job replays 10^6 iterations per point:
    a page holds what its budget replays, not 11 points of 10^7 iterations' work."""
    stub.AttachJob(pb.AttachJobRequest(job_id="very-long", spec=VERY_LONG, world_size=1))
    service.max_values_cells = 100_000
    reply = stub.GetValues(pb.GetValuesRequest(job_id="very-long", stride=50_000), timeout=30)
    assert reply.plan.num_iterations == 1 + (100_000 - 2) // (2 + 49_999) == 2
    following = stub.GetValues(pb.GetValuesRequest(
        job_id="very-long", stride=50_000, page_token=reply.next_page_token), timeout=30)
    assert following.plan.start_iteration == 100_000 and following.plan.num_iterations >= 1
    first = stub.GetValues(pb.GetValuesRequest(job_id="very-long", stride=10**6), timeout=30)
    assert first.plan.num_iterations == 1  # iteration 0; 10^6 is too far from any state
    error = refused(lambda: stub.GetValues(pb.GetValuesRequest(
        job_id="very-long", stride=10**6, page_token=first.next_page_token), timeout=30))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # (the nearest state is about where the stride-50,000 pages stopped, at 100,000)
    replay = re.search(r"plus (\d+) iterations of replay", error.details())
    assert replay is not None and 800_000 <= int(replay.group(1)) <= 900_000
    assert "a stride of at most 99998" in error.details()


def test_the_budget_is_a_server_option_sized_under_the_message_limit(tmp_path: Path):
    parser = make_parser()
    assert parser.parse_args(["serve", "--max-values-cells", "5000"]).max_values_cells == 5000
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--max-values-cells", "0"])
    default = InProcessServer(data_dir=tmp_path).start()
    try:
        assert default.parts is not None
        cells = default.parts.service.max_values_cells
        assert cells == server_pages.DEFAULT_MAX_VALUES_CELLS
        assert cells * 8 <= default.config.max_message_bytes // 2  # doubles, well under
    finally:
        default.stop()


# -- deadlines -------------------------------------------------------------------------
VERY_LONG = spec_proto([dict(type="CosineAnnealingLR", by_epoch=False)], epoch_length=5,
                       max_epochs=None, max_iters=10**7)


def test_work_stops_when_the_callers_deadline_passes(
        server: InProcessServer, stub: pb_grpc.SchedulerServiceStub, service: SchedulerService):
    """A preview from iteration 5 * 10^6 replays that far before its first value (many
    seconds): the call fails at its deadline, the server stops soon after and keeps
    answering meanwhile."""
    request = pb.PreviewScheduleRequest(spec=VERY_LONG, start_iteration=5 * 10**6)
    began = time.monotonic()
    error = refused(lambda: stub.PreviewSchedule(request, timeout=0.5))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stub.GetValues(pb.GetValuesRequest(job_id="long", stop_iteration=2),
                          timeout=5).plan.num_iterations == 2

    async def direct() -> float:
        began = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await service.preview(spec_to_dict(VERY_LONG), 5 * 10**6, 0, {},
                                  deadline=time.monotonic() + 0.3)
        return time.monotonic() - began

    assert server._call(direct()) < 3.0  # the replay alone takes far longer
    assert time.monotonic() - began < 10


def test_a_page_is_cut_before_the_deadline_with_what_is_done(
        stub: pb_grpc.SchedulerServiceStub, service: SchedulerService):
    """11 points of a 10^7-iteration preview cost little but replay 10^7 iterations:
    the page holds the points done by about 3/4 of the caller's time, and a token."""
    began = time.monotonic()
    strided = stub.PreviewSchedule(pb.PreviewScheduleRequest(spec=VERY_LONG, stride=10**6),
                                   timeout=2.0)
    assert time.monotonic() - began < 2.0
    assert 1 <= strided.plan.num_iterations < 11 and strided.next_page_token
    service.max_values_cells = server_pages.DEFAULT_MAX_VALUES_CELLS  # the reply's size
    began = time.monotonic()
    reply = stub.PreviewSchedule(pb.PreviewScheduleRequest(spec=VERY_LONG), timeout=2.0)
    assert time.monotonic() - began < 2.0
    assert 0 < reply.plan.num_iterations < 10**7 and reply.next_page_token
    following = stub.PreviewSchedule(pb.PreviewScheduleRequest(
        spec=VERY_LONG, page_token=reply.next_page_token, stop_iteration=0), timeout=10)
    assert following.plan.start_iteration == reply.plan.num_iterations


# -- the client and the CLI --------------------------------------------------------------
def test_the_client_fetches_every_page_and_accepts_a_stride(
        server: InProcessServer, service: SchedulerService, one_shot: dict[str, Any]):
    full = one_shot["long"][0]
    service.max_values_cells = 300 + 7 * WIDTH  # pages of a few rows
    with Client(server.target, wait_timeout=10.0) as client:
        values = client.values("long", stride=7)
        assert values.stride == 7 and list(values.iterations) == list(range(0, 301, 7))
        assert bits([list(r) for r in values.rows]) == bits(full[::7])
        assert values.at(14) == tuple(full[14]) and not values.covers(15)
        assert values.series("lr", 1)[0][:3] == [0, 7, 14]
        assert bits(client.get_values("long", 10, 100, stride=3)) == bits(full[10:100:3])
        assert bits(client.get_values("long")) == bits(full)
        preview = client.preview(WARMUP_COSINE, GROUPS, epoch_length=5, max_epochs=EPOCHS,
                                 stride=9, start=4)
        assert bits([list(r) for r in preview.rows]) == bits(full[4::9])
        with pytest.raises(ValueError, match="stride"):
            client.values("long", stride=0)


def test_a_plot_of_a_long_job_reads_about_2000_points(
        server: InProcessServer, stub: pb_grpc.SchedulerServiceStub, service: SchedulerService,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = spec_proto([dict(type="CosineAnnealingLR", by_epoch=False)], epoch_length=5,
                      max_epochs=None, max_iters=100_000)
    stub.AttachJob(pb.AttachJobRequest(job_id="plot-long", spec=spec, world_size=1))
    served = count_pages(service, monkeypatch)
    out = tmp_path / "long.png"
    assert paramsched("plot", "--job", "plot-long", "--out", str(out),
                      "--target", server.target) == 0
    assert out.stat().st_size > 1000
    assert cli_curves.plot_stride(100_001) == 51
    assert 1900 <= sum(served) <= 2000  # not 100,001 rows


def test_a_plot_of_a_long_config_keeps_every_kth_row():
    from paramsched.server.schedules import build_job_spec

    spec = build_job_spec(WARMUP_COSINE, GROUPS, epoch_length=5, max_epochs=EPOCHS)
    strided = cli_curves.simulate(spec, stride=13)
    whole = cli_curves.simulate(spec)
    assert strided.stride == 13 and bits([list(r) for r in strided.rows]) == bits(
        [list(r) for r in whole.rows[::13]])


# -- job-scoped ListJobs -------------------------------------------------------------------
class CountingStore:
    """A real store that counts the job records its listings and reads return."""

    def __init__(self, store: EmbeddedJobStore) -> None:
        self.store = store
        self.records_read = 0
        self.calls = 0

    async def list(self, prefix: str = "", after: str = "", limit: int = 100) -> Any:
        found = await self.store.list(prefix, after, limit)
        self.calls += 1
        self.records_read += len(found)
        return found

    async def get(self, job_id: str) -> Any:
        found = await self.store.get(job_id)
        self.calls += 1
        self.records_read += found is not None
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_job_scoped_listing_reads_only_the_tokens_jobs(tmp_path: Path):
    # In memory where the machine has it: a thousand fsync'ed creates are slow on disk.
    folder = Path(tempfile.mkdtemp(dir="/dev/shm")) if Path("/dev/shm").is_dir() else tmp_path

    async def scenario() -> None:
        inner = EmbeddedJobStore(folder / "many")
        store = CountingStore(inner)
        service = SchedulerService(store)  # type: ignore[arg-type]
        try:
            await service.attach("aaa-0000", spec_to_dict(LONG), world_size=1)
            record = await inner.get("aaa-0000")
            assert record is not None
            others = [f"aaa-{i:04d}" for i in range(1, 1000)]
            mine = ["team-a-0", "team-a-1", "team-a-2", "team-a-3", "team-a-x-0", "solo"]
            for job_id in others + mine + ["team-b-0"]:
                await inner.create(dataclasses.replace(record.copy(), job_id=job_id))
            token = current_principal.set(Principal(
                "team-a", jobs=frozenset({"solo", "gone", "team-a-1"}),
                job_prefixes=("team-a-", "team-a-x-")))
            try:
                store.records_read = store.calls = 0
                seen, page_token, pages = [], "", 0
                while True:
                    views, page_token = await service.list("", 2, page_token)
                    seen += [v.record.job_id for v in views]
                    pages += 1
                    if not page_token:
                        break
                assert seen == sorted(mine)
                # Per page: one listing of team-a- (the prefix team-a-x- is inside it)
                # and reads of the listed ids past it, never the 1,000 other jobs.
                assert store.records_read <= pages * 5 and store.calls <= pages * 4
                store.records_read = 0
                views, _ = await service.list("team-a-x", 10, "")
                assert [v.record.job_id for v in views] == ["team-a-x-0"]
                assert store.records_read <= 2
            finally:
                current_principal.reset(token)
            store.records_read = 0
            views, _ = await service.list("", 1000, "")  # an admin reads one page
            assert len(views) == 1000 and store.records_read == 1001
        finally:
            await inner.close()

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


JOB_IDS = st.text(alphabet="ab-", min_size=1, max_size=4)


@settings(max_examples=25, deadline=None)
@given(jobs=st.sets(JOB_IDS, min_size=1, max_size=25), own_ids=st.sets(JOB_IDS, max_size=5),
       own_prefixes=st.sets(JOB_IDS, max_size=3), prefix=st.text(alphabet="ab-", max_size=2),
       page_size=st.integers(1, 4))
def test_a_job_scoped_listing_pages_through_exactly_the_jobs_the_token_may_see(
        jobs: set[str], own_ids: set[str], own_prefixes: set[str], prefix: str,
        page_size: int):
    principal = Principal("p", jobs=frozenset(own_ids), job_prefixes=tuple(sorted(own_prefixes)))
    folder = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))

    async def listed() -> list[str]:
        store = EmbeddedJobStore(folder)
        service = SchedulerService(store)
        try:
            await service.attach("seed", spec_to_dict(LONG), world_size=1)
            record = await store.get("seed")
            assert record is not None
            await store.delete("seed")
            for job_id in jobs:
                await store.create(dataclasses.replace(record.copy(), job_id=job_id))
            token = current_principal.set(principal)
            try:
                seen, page_token = [], ""
                while True:
                    views, page_token = await service.list(prefix, page_size, page_token)
                    assert len(views) <= page_size
                    seen += [v.record.job_id for v in views]
                    if not page_token:
                        return seen
            finally:
                current_principal.reset(token)
        finally:
            await store.close()

    try:
        seen = asyncio.run(listed())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert seen == sorted(j for j in jobs if j.startswith(prefix) and principal.may_access(j))


def test_scope_sources_drop_what_another_source_covers():
    principal = Principal("p", jobs=frozenset({"x-1", "y-1", "z"}),
                          job_prefixes=("x-", "x-a-", "w"))
    assert server_pages.scope_sources(principal, "") == (["w", "x-"], ["y-1", "z"])
    assert server_pages.scope_sources(principal, "x-a-b") == (["x-a-b"], [])
    assert server_pages.scope_sources(principal, "y") == ([], ["y-1"])
    assert math.isclose(server_pages.DEADLINE_SHARE, 0.75)


def test_the_dashboards_curves_of_a_wide_job_are_complete_in_few_pages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """32 groups x 20,001 iterations over a budget of about 50 rows: the dashboard's
    /values follows GetValues' pages to the end (every iteration, then every 201st and
    the last), each a page of the strided request, not one call per sample."""
    from web_harness import dashboard

    groups = [{"lr": 0.1 / (g + 1), "momentum": 0.9} for g in range(32)]
    cfg = [dict(type="LinearLR", start_factor=0.01, by_epoch=False, end=100),
           dict(type="CosineAnnealingLR", by_epoch=False, begin=100, eta_min=1e-6)]
    width = 32
    with dashboard(tmp_path, max_values_cells=50 * width + 64) as ui:
        ui.make_job("wide", cfg=cfg, groups=groups, epoch_length=None, max_epochs=None,
                    max_iters=20_000, world_size=1)
        service = ui.server.parts.service  # type: ignore[union-attr]
        served = count_pages(service, monkeypatch)
        truth = flat_truth(spec_proto(cfg, groups, epoch_length=None, max_epochs=None,
                                      max_iters=20_000))

        def expected(iterations: list[int]) -> list[list[float]]:
            return [[truth[t * width + g] for t in iterations] for g in range(width)]

        status, _, whole = ui.request("/api/v1/jobs/wide/values?step=1")
        assert status == 200 and whole["iterations"] == list(range(20_001))
        assert whole["values"]["lr"] == expected(whole["iterations"])
        assert sum(served) == 20_001 and len(served) == -(-20_001 // 51)
        served.clear()
        status, _, sampled = ui.request("/api/v1/jobs/wide/values?points=100")
        assert sampled["step"] == 201
        assert sampled["iterations"] == [*range(0, 20_001, 201), 20_000]
        assert sampled["values"]["lr"] == expected(sampled["iterations"])
        # 100 points of 32 values and 200 iterations of replay each: about 7 per page
        assert len(served) <= 100 // 7 + 3 and sum(served) == 101


def test_a_change_plot_of_a_long_job_reads_about_2000_points(
        server: InProcessServer, stub: pb_grpc.SchedulerServiceStub, service: SchedulerService,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`set ... --plot` draws the job before and after at about 2,000 points: the
    values come with a stride (the change's own preview aside), not 300,001 rows."""
    spec = spec_proto([dict(type="CosineAnnealingLR", by_epoch=False)], epoch_length=5,
                      max_epochs=None, max_iters=300_000)
    stub.AttachJob(pb.AttachJobRequest(job_id="change-long", spec=spec, world_size=1))
    served: list[tuple[int, int]] = []
    real = service.values

    async def counted(*args: Any, **kwargs: Any) -> Any:
        page = await real(*args, **kwargs)
        served.append((len(page.values), page.stride))
        return page

    monkeypatch.setattr(service, "values", counted)
    out = tmp_path / "change.png"
    assert paramsched("set", "change-long", "lr", "0.003", "--from", "250000",
                      "--force", "--plot", str(out), "--target", server.target) == 0
    assert out.stat().st_size > 1000
    stride = cli_curves.plot_stride(300_001)
    assert stride == 151 and {s for _, s in served} == {stride}
    # 1,987 points of the job; "after" is the change's own preview (every 151st row)
    assert sum(n for n, _ in served) == len(range(0, 300_001, stride))

def count_pages(service: SchedulerService, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of every page ``service.values`` serves from now on."""
    served: list[int] = []
    real = service.values

    async def counted(*args: Any, **kwargs: Any) -> Any:
        page = await real(*args, **kwargs)
        served.append(len(page.values))
        return page

    monkeypatch.setattr(service, "values", counted)
    return served
