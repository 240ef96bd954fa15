"""The engine's state is plain data: it survives JSON, and a replay continued from a
restored state gives the same values as one that never stopped."""

from __future__ import annotations

import json

from paramsched.server.schedules import ReplayState, Timeline, build_job_spec
from paramsched.server.schedules.replay import Replayer

CONFIG = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=7),
    dict(type="CosineAnnealingLR", T_max=3, by_epoch=True, convert_to_iter_based=True),
    dict(type="ReduceOnPlateauMomentum", patience=0, factor=0.5),
]
GROUPS = [{"lr": 0.1, "betas": [0.9, 0.999]}, {"lr": 0.02, "betas": [0.8, 0.99]}]
DECISIONS = {e: {"loss": 1.0} for e in range(6)}


def test_replay_state_round_trips_through_json_and_replays_on():
    spec = build_job_spec(CONFIG, GROUPS, epoch_length=5, max_epochs=6)
    replayer = Replayer(spec)
    state = replayer.initial.copy()
    replayer.advance(state, 13, DECISIONS)
    restored = ReplayState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state
    uninterrupted = Timeline(spec).values_range(13, 31, DECISIONS)
    resumed = []
    for t in range(13, 31):
        replayer.advance(restored, t, DECISIONS)
        resumed.append(replayer.group_values(restored))
    assert resumed == uninterrupted
