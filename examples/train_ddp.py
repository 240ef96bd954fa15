"""DDP on CPU: N processes (torch.distributed, gloo), every rank attached to one job.

    paramsched serve --port 50051 --data-dir /tmp/paramsched      # in another shell
    python examples/train_ddp.py 127.0.0.1:50051 --world-size 4

Every rank attaches with the same config (the first creates the job, the others
join), steps its optimizer as usual and ends each epoch with the validation loss
averaged over all ranks, so every rank reports the same decision. ``--target`` may
list several servers (``a:1,b:2``, e.g. replicas on one Redis): rank r uses the
(r mod n)-th. ``--record DIR`` writes what each rank's optimizer held before every
step (for the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from paramsched import Client

PARAM_SCHEDULER = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=8),
    dict(type="CosineAnnealingMomentum", by_epoch=True, eta_min=0.5, convert_to_iter_based=True),
    dict(type="ReduceOnPlateauLR", monitor="loss", patience=0, factor=0.5),
]


def worker(rank: int, args: argparse.Namespace, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.world_size)
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(rank)
    data = [
        (torch.randn(8, 8, generator=generator), torch.randn(8, 1, generator=generator))
        for _ in range(args.epoch_length)
    ]
    val = (torch.randn(32, 8, generator=generator), torch.randn(32, 1, generator=generator))
    targets = args.target.split(",")
    records: list[list[dict[str, float]]] = []
    metrics: list[dict[str, float]] = []
    with (
        Client(targets[rank % len(targets)]) as client,
        client.attach(
            optimizer,
            args.job_id,
            PARAM_SCHEDULER,
            epoch_length=args.epoch_length,
            max_epochs=args.epochs,
        ) as handle,
    ):  # rank and world size come from torch.distributed
        for epoch in range(args.epochs):
            for x, y in data:
                records.append(
                    [
                        {k: float(g[k]) for k in ("lr", "momentum", "weight_decay")}
                        for g in optimizer.param_groups
                    ]
                )
                loss = nn.functional.mse_loss(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                val_loss = nn.functional.mse_loss(model(val[0]), val[1]).reshape(1)
            dist.all_reduce(val_loss)  # the same metrics on every rank
            metrics.append({"loss": val_loss.item() / args.world_size})
            handle.end_epoch(metrics[-1])
            if rank == 0:
                print(
                    f"epoch {epoch}: val_loss={metrics[-1]['loss']:.4f} "
                    f"lr={optimizer.param_groups[0]['lr']:.5f}",
                    flush=True,
                )
        records.append(
            [
                {k: float(g[k]) for k in ("lr", "momentum", "weight_decay")}
                for g in optimizer.param_groups
            ]
        )
    if args.record:
        path = Path(args.record) / f"rank{rank}.json"
        path.write_text(json.dumps({"values": records, "metrics": metrics}))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "target", nargs="?", default=os.environ.get("PARAMSCHED_TARGET", "127.0.0.1:50051")
    )
    parser.add_argument("--job-id", default="example-ddp")
    parser.add_argument("--world-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--epoch-length", type=int, default=6)
    parser.add_argument("--record", type=Path)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(worker, args=(args, port), nprocs=args.world_size)


if __name__ == "__main__":
    main()
