"""One process, a tiny model, the schedule served by paramsched.

    paramsched serve --port 50051 --data-dir /tmp/paramsched      # in another shell
    python examples/train_single.py 127.0.0.1:50051 --checkpoint ckpt.pt --stop-after 1
    python examples/train_single.py 127.0.0.1:50051 --checkpoint ckpt.pt   # resumes

The address can also come from ``PARAMSCHED_TARGET``. With ``--checkpoint`` the script
resumes from the file when it exists (against any server, even a fresh one) and
writes it after every epoch.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn

from paramsched import Client

EPOCH_LENGTH = 10  # batches per epoch: len(loader)
PARAM_SCHEDULER = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=15),
    dict(type="CosineAnnealingLR", by_epoch=True, begin=1, convert_to_iter_based=True),
    dict(
        type="ReduceOnPlateauParamScheduler",
        param_name="weight_decay",
        monitor="loss",
        patience=0,
        factor=0.5,
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "target", nargs="?", default=os.environ.get("PARAMSCHED_TARGET", "127.0.0.1:50051")
    )
    parser.add_argument("--job-id", default="example-single")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--stop-after", type=int, help="stop after this epoch (a crash)")
    args = parser.parse_args()

    torch.manual_seed(0)
    data = [(torch.randn(16, 8), torch.randn(16, 1)) for _ in range(EPOCH_LENGTH)]
    val = (torch.randn(64, 8), torch.randn(64, 1))
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    with Client(args.target) as client:
        # Attach before loading optimizer state: the job starts from these values.
        handle = client.attach(
            optimizer,
            args.job_id,
            PARAM_SCHEDULER,
            epoch_length=EPOCH_LENGTH,
            max_epochs=args.epochs,
        )
        if args.checkpoint and args.checkpoint.exists():
            ckpt = torch.load(args.checkpoint, weights_only=True)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            handle.load_state_dict(ckpt["scheduler"])  # values of the next iteration
        if handle.finished:
            # Resumed from the checkpoint of a run that completed: say so, train nothing.
            print(f"job {args.job_id!r} finished at iteration {handle.iteration} "
                  f"(checkpoint {args.checkpoint}); nothing left to train. To train it "
                  "again, delete the checkpoint and the job (`paramsched jobs delete "
                  f"{args.job_id}`), or pass a new --job-id")
            handle.detach()
            return
        with handle:
            for epoch in range(handle.iteration // EPOCH_LENGTH, args.epochs):
                for x, y in data:
                    loss = nn.functional.mse_loss(model(x), y)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()  # applies the next iteration's values
                with torch.no_grad():
                    val_loss = nn.functional.mse_loss(model(val[0]), val[1]).item()
                handle.end_epoch({"loss": val_loss})
                group = optimizer.param_groups[0]
                print(
                    f"epoch {epoch}: val_loss={val_loss:.4f} lr={group['lr']:.5f} "
                    f"weight_decay={group['weight_decay']:.2e}"
                )
                if args.checkpoint:
                    torch.save(
                        {
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": handle.state_dict(),
                        },
                        args.checkpoint,
                    )
                if epoch == args.stop_after:
                    break


if __name__ == "__main__":
    main()
