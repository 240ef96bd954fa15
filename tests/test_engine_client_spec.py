"""The engine's inputs as the client builds them (``client/spec.py``): non-finite numbers
travel as JSON tokens so the server can name the field, a float32 tensor value travels
with its dtype, and what cannot be sent at all is named by index, type and field."""

from __future__ import annotations

import json
import math

import pytest
import torch

from paramsched.client.spec import build_spec, config_json
from paramsched.server.grpc.servicer import spec_to_dict, spec_to_proto
from paramsched.server.schedules import ConfigError, Timeline, build_job_spec
from paramsched.server.service.inputs import parse_spec


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(2))]


def test_infinite_end_and_nan_travel_as_json_tokens() -> None:
    text = config_json([{"type": "LinearLR", "end": math.inf},
                        {"type": "ExponentialLR", "gamma": math.nan}])
    assert "Infinity" in text and "NaN" in text
    decoded = json.loads(text)
    assert decoded[0]["end"] == math.inf
    # The server then names the one field that may not be NaN.
    with pytest.raises(ConfigError) as info:
        build_job_spec(decoded, [{"lr": 0.1}], max_iters=4)
    assert info.value.field == "param_scheduler[1].gamma"
    assert "ExponentialLR" in str(info.value)


def test_what_cannot_be_sent_is_named_by_index_type_and_field() -> None:
    with pytest.raises(TypeError) as info:
        config_json([{"type": "ConstantLR"}, {"type": "StepLR", "step_size": object()}])
    message = str(info.value)
    assert "param_scheduler[1] (StepLR): field 'step_size'" in message
    with pytest.raises(TypeError, match=r"param_scheduler\[0\] \(MultiStepLR\): field "
                                        r"'milestones'\[1\]"):
        config_json({"type": "MultiStepLR", "milestones": [1, {2}]})


def test_float32_tensor_lr_is_sent_with_its_dtype_and_computed_in_float32() -> None:
    opt = torch.optim.Adam([{"params": _params()}, {"params": _params(), "lr": 1e-2}],
                           lr=torch.tensor(1e-3))
    cfg = [{"type": "CosineAnnealingLR", "eta_min": 1e-5, "by_epoch": False}]
    spec = build_spec(opt, cfg, epoch_length=None, max_epochs=None, max_iters=20)
    assert dict(spec.initial_values[0].dtypes) == {"lr": "float32"}
    assert dict(spec.initial_values[1].dtypes) == {}
    data = spec_to_dict(spec)
    assert data["dtypes"] == [{"lr": "float32"}, {}]
    job = parse_spec(data)
    assert job.float32 == (("lr",), ())
    # Stored and handed back, the dtype stays with the job.
    assert spec_to_dict(spec_to_proto(job.to_dict()))["dtypes"] == [{"lr": "float32"}, {}]
    values = Timeline(job).values_range(0, 21)
    lr32 = [v[0]["lr"] for v in values]
    assert all(float(torch.tensor(x, dtype=torch.float32)) == x for x in lr32)
    assert any(float(torch.tensor(x, dtype=torch.float32)) != x for x in
               (v[1]["lr"] for v in values))


def test_a_float64_tensor_lr_needs_no_dtype() -> None:
    opt = torch.optim.SGD(_params(), lr=torch.tensor(0.1, dtype=torch.float64))
    spec = build_spec(opt, {"type": "ConstantLR"}, epoch_length=None, max_epochs=None,
                      max_iters=4)
    assert dict(spec.initial_values[0].dtypes) == {}
    assert "dtypes" not in spec_to_dict(spec)


def test_semantics_travels_in_the_proto_spec() -> None:
    job = build_job_spec([{"type": "ConstantLR"}], [{"lr": 0.1}], max_iters=4)
    proto = spec_to_proto(job.to_dict())
    assert proto.HasField("semantics") and proto.semantics == job.semantics
    old = build_job_spec([{"type": "ConstantLR"}], [{"lr": 0.1}], max_iters=4, semantics=1)
    assert not spec_to_proto(old.to_dict()).HasField("semantics")


def test_the_torch_free_spec_builder_encodes_configs_the_same_way() -> None:
    """``Client.preview`` and tools build specs without torch; an infinite end, a tuple
    and a one-element tensor travel exactly as through ``attach``."""
    from paramsched.client.jobspec import job_spec

    cfg = [{"type": "MultiStepLR", "milestones": (2, 3), "gamma": torch.tensor(0.5),
            "by_epoch": False, "end": math.inf}]
    spec = job_spec(cfg, [{"lr": 0.1}], max_iters=6, dtypes=[{"lr": "float32"}])
    assert spec.param_scheduler_json == config_json(cfg)
    assert json.loads(spec.param_scheduler_json)[0]["milestones"] == [2, 3]
    assert dict(spec.initial_values[0].dtypes) == {"lr": "float32"}
    with pytest.raises(TypeError, match=r"param_scheduler\[0\] \(X\): field 'bad'"):
        job_spec([{"type": "X", "bad": object()}], [{"lr": 0.1}], max_iters=6)
