"""The Hugging Face Trainer with its lr schedule served by paramsched: one callback added.

    paramsched serve --port 50051 --data-dir /tmp/paramsched       # in another shell
    python examples/train_transformers.py 127.0.0.1:50051 --output-dir /tmp/hf-run
    python examples/train_transformers.py 127.0.0.1:50051 --output-dir /tmp/hf-run \\
        --resume /tmp/hf-run/checkpoint-20                         # a new process resumes
    torchrun --nproc-per-node 2 examples/train_transformers.py 127.0.0.1:50051 --ddp

The address can also come from ``PARAMSCHED_TARGET``. The model and data are built in
code (nothing is downloaded); the ``TrainingArguments`` are an ordinary Trainer setup
(cosine with warm-up, gradient accumulation, evaluation and checkpoints every 10 steps),
and the only paramsched line is the callback. ``--plateau`` trains with
``reduce_lr_on_plateau`` instead, deciding on the evaluations.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from paramsched.integrations.transformers import ParamschedCallback


class TinyRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        out = self.body(x).squeeze(-1)
        loss = ((out - labels) ** 2).mean() if labels is not None else None
        return {"loss": loss, "logits": out}


class Points(torch.utils.data.Dataset):
    """y = sum(x) + noise, generated from the index (the same on every rank)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_000 + i)
        x = torch.randn(8, generator=g)
        return {"x": x, "labels": x.sum() + 0.1 * torch.randn((), generator=g)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "target", nargs="?", default=os.environ.get("PARAMSCHED_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--job", default="hf-example")
    parser.add_argument("--output-dir", default="/tmp/paramsched-hf-example")
    parser.add_argument("--resume", help="a checkpoint folder of an earlier run")
    parser.add_argument("--plateau", action="store_true", help="reduce_lr_on_plateau")
    parser.add_argument("--ddp", action="store_true", help="under torchrun: gloo on CPU")
    args = parser.parse_args()

    schedule: dict[str, Any] = dict(lr_scheduler_type="cosine", warmup_steps=0.1)
    if args.plateau:
        schedule = dict(lr_scheduler_type="reduce_lr_on_plateau",
                        lr_scheduler_kwargs={"patience": 1, "factor": 0.5})
    training = TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=4, per_device_train_batch_size=8,
        gradient_accumulation_steps=2, learning_rate=3e-3, weight_decay=0.01,
        eval_strategy="steps", eval_steps=10, save_strategy="steps", save_steps=10,
        logging_steps=5, report_to="none", use_cpu=True,
        ddp_backend="gloo" if args.ddp else None, **schedule)
    torch.manual_seed(0)
    trainer = Trainer(
        model=TinyRegressor(), args=training, train_dataset=Points(640, seed=0),
        eval_dataset=Points(64, seed=1),
        callbacks=[ParamschedCallback(server=args.target, job_id=args.job)])  # the one change
    trainer.train(resume_from_checkpoint=args.resume)


if __name__ == "__main__":
    main()
