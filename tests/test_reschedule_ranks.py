"""A change issued while 4 real rank processes train: every rank switches on the same
iteration, and no value handed out before the change moved."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc

from process_harness import ServerProcess
from test_service_grpc import decode

STEPS = 160
CONFIG = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=10),
          dict(type="CosineAnnealingLR", T_max=8, by_epoch=True, convert_to_iter_based=True)]

RANK = textwrap.dedent('''
    import json, sys, time, torch
    from paramsched import Client
    target, rank, out, steps, config = sys.argv[1], int(sys.argv[2]), sys.argv[3], \\
        int(sys.argv[4]), json.loads(sys.argv[5])
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.01}],
                          lr=0.1, momentum=0.9)
    seen = []
    # Short plans, so a change can take effect soon after it is made.
    with Client(target, plan_size=4, max_plan_size=4, prefetch_seconds=0.0) as client:
        handle = client.attach(opt, "live", config, epoch_length=20, max_epochs=8,
                               rank=rank, world_size=4, run_id="live-ranks")
        for _ in range(steps):
            seen.append([g["lr"] for g in opt.param_groups])
            model(torch.randn(3, 4)).sum().backward()
            opt.step()
            opt.zero_grad()
            time.sleep(0.01)
            if handle.iteration % 20 == 0:
                handle.end_epoch()
        handle.detach()
    json.dump(seen, open(out, "w"))
''')


def test_four_ranks_switch_on_the_same_iteration(tmp_path: Path):
    server = ServerProcess(data_dir=tmp_path / "data").start()
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    ranks = [subprocess.Popen([sys.executable, str(script), server.target, str(r),
                               str(tmp_path / f"rank{r}.json"), str(STEPS), json.dumps(CONFIG)])
             for r in range(4)]
    channel = grpc.insecure_channel(server.target)
    stub = pb_grpc.SchedulerServiceStub(channel)
    try:
        # Wait until every rank is training, then change the schedule mid-run.
        deadline = time.monotonic() + 60
        while True:
            try:
                job = stub.GetJob(pb.GetJobRequest(job_id="live")).job
                if len(job.progress) == 4 and min(p.iteration for p in job.progress) >= 30:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "ranks did not start"
            time.sleep(0.05)
        before = decode(stub.GetValues(pb.GetValuesRequest(job_id="live")).plan)
        reply = stub.RescheduleJob(pb.RescheduleJobRequest(
            job_id="live", action="decay", param_scheduler_json=json.dumps([dict(
                type="PolyParamScheduler", param_name="lr", eta_min=1e-4, power=1.0,
                by_epoch=False, end=21)])))
        switch = reply.from_iteration
        assert reply.applied and 30 <= switch < STEPS - 20
        for rank in ranks:
            assert rank.wait(120) == 0
        after = decode(stub.GetValues(pb.GetValuesRequest(job_id="live")).plan)
    finally:
        channel.close()
        for rank in ranks:
            rank.kill()
        server.stop()
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    assert all(r == records[0] for r in records)  # identical on every rank
    seen = records[0]
    old = [[g["lr"] for g in step] for step in before]
    new = [[g["lr"] for g in step] for step in after]
    assert seen[:switch] == old[:switch]  # nothing handed out before the change moved
    assert seen[switch:] == new[switch:STEPS]  # the switch, on the same iteration for all
    assert seen[switch] == old[switch] and seen[switch + 20][0] == 1e-4  # decayed in 20
    assert new[switch + 1] != old[switch + 1]
