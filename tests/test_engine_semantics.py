"""Engine semantics are versioned per job: a job computes with the version it was made with.

Version 1 (the first engine) treats an Adam-style ``momentum`` key and ``betas[0]`` as one
value; version 2 (current) keeps them apart as MMEngine does. A stored spec without a
``semantics`` field is version 1 and keeps its exact old values; a new job gets the current
version; a version this server does not know is refused, naming the field.
"""

from __future__ import annotations

from typing import Any

import pytest

from paramsched.server.schedules import (
    CURRENT_SEMANTICS,
    ConfigError,
    JobSpec,
    ScheduleArithmeticError,
    Timeline,
    build_job_spec,
)
from paramsched.server.service.inputs import parse_spec

from oracle_mmengine import assert_engine_matches_mmengine

ADAM = [{"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.0}]
# The repro: a generic scheduler halves the momentum *key*; betas[0] (what Adam
# uses) follows only when the Momentum scheduler steps after it.
SPLIT = [
    {"type": "ConstantMomentum", "factor": 1.0, "by_epoch": False},
    {"type": "ConstantParamScheduler", "param_name": "momentum", "factor": 0.5,
     "by_epoch": False, "end": 3},
]


def _momentum(spec: JobSpec) -> list[float]:
    return [v[0]["momentum"] for v in Timeline(spec).values_range(0, spec.max_iters + 1)]


def test_new_jobs_get_the_current_version_and_store_it() -> None:
    spec = build_job_spec(SPLIT, ADAM, max_iters=4)
    assert spec.semantics == CURRENT_SEMANTICS == 2
    assert spec.to_dict()["semantics"] == 2
    assert JobSpec.from_dict(spec.to_dict()).semantics == 2


def test_two_versions_side_by_side_on_a_config_where_they_differ() -> None:
    new = build_job_spec(SPLIT, ADAM, max_iters=4)
    old = build_job_spec(SPLIT, ADAM, max_iters=4, semantics=1)
    assert _momentum(new) == [0.9, 0.45, 0.45, 0.9, 0.9]  # MMEngine's betas[0]
    assert _momentum(old) == [0.45, 0.45, 0.9, 0.9, 0.9]  # what version 1 handed out
    assert_engine_matches_mmengine(SPLIT, ADAM, 1, max_iters=4, strict_rejections=True)


def test_a_stored_spec_without_a_version_is_version_1_with_its_old_values() -> None:
    old = build_job_spec(SPLIT, ADAM, max_iters=4, semantics=1)
    stored = old.to_dict()
    assert "semantics" not in stored  # byte-identical to what version 1 stored
    again = JobSpec.from_dict(stored)
    assert again.semantics == 1 and _momentum(again) == _momentum(old)
    # Through the service's parser: a stored record or a checkpoint is version 1 ...
    assert parse_spec(stored, prefix="stored spec").semantics == 1
    assert parse_spec(stored, prefix="state.spec").semantics == 1
    # ... while a new job's spec (from a client, no version) gets the current one.
    assert parse_spec(stored).semantics == CURRENT_SEMANTICS


def test_configs_where_versions_agree_give_the_same_values() -> None:
    cfg = [{"type": "LinearLR", "start_factor": 0.1, "by_epoch": False, "end": 5},
           {"type": "CosineAnnealingMomentum", "eta_min": 0.5, "by_epoch": False}]
    a = Timeline(build_job_spec(cfg, ADAM, max_iters=12)).values_range(0, 13)
    b = Timeline(build_job_spec(cfg, ADAM, max_iters=12, semantics=1)).values_range(0, 13)
    assert a == b


@pytest.mark.parametrize("version", [3, 0, "2", True, 2.0])
def test_an_unknown_version_is_refused_naming_the_field(version: Any) -> None:
    with pytest.raises(ConfigError) as info:
        build_job_spec(SPLIT, ADAM, max_iters=4, semantics=version)
    assert info.value.field == "semantics"
    assert "upgrade the server" in str(info.value)
    data = build_job_spec(SPLIT, ADAM, max_iters=4).to_dict() | {"semantics": version}
    with pytest.raises(ConfigError):
        JobSpec.from_dict(data)


def test_poly_complex_step_refused_from_version_2_and_an_arithmetic_error_in_version_1() -> None:
    cfg = [{"type": "PolyLR", "power": 0.9, "by_epoch": True, "end": 3.5}]
    with pytest.raises(ConfigError) as info:
        build_job_spec(cfg, [{"lr": 0.1}], epoch_length=1, max_epochs=4)
    assert info.value.field == "param_scheduler[0].power"
    assert "complex" in str(info.value)
    old = build_job_spec(cfg, [{"lr": 0.1}], epoch_length=1, max_epochs=4, semantics=1)
    with pytest.raises(ScheduleArithmeticError) as failed:  # never a bare TypeError
        Timeline(old).values_range(0, 5)
    assert failed.value.field == "param_scheduler[0].power"
    assert "PolyLR" in str(failed.value)


def test_attaching_again_joins_a_version_1_job_and_keeps_its_values(tmp_path: Any) -> None:
    """A job created before the upgrade (stored without a version) is joined by the same
    config on a new server, at version 1, with version 1's values; never a conflict."""
    import asyncio

    from paramsched.server.service.core import SchedulerService
    from paramsched.server.store.embedded import EmbeddedJobStore

    async def scenario() -> tuple[list[float], list[float], bool, bool]:
        store = EmbeddedJobStore(tmp_path)
        try:
            service = SchedulerService(store)
            old = {"param_scheduler": SPLIT, "initial_values": ADAM, "max_iters": 4,
                   "semantics": 1}
            first = await service.attach("job", old)
            again = await service.attach("job", {k: v for k, v in old.items()
                                                 if k != "semantics"})
            def momentum(a: Any) -> list[float]:
                return [row[0]["momentum"] for row in a.plan.values]
            return momentum(first), momentum(again), first.created, again.created
        finally:
            await store.close()

    first, again, created, created_again = asyncio.run(scenario())
    assert created and not created_again
    assert first == again == [0.45, 0.45, 0.9, 0.9, 0.9]
