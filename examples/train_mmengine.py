"""MMEngine's Runner on a tiny config, its schedule served by paramsched (one line changed).

    paramsched serve --port 50051 --data-dir /tmp/paramsched      # in another shell
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 python examples/train_mmengine.py 127.0.0.1:50051

The config below is an ordinary MMEngine config: ``param_scheduler``, ``optim_wrapper``,
``train_cfg`` and ``val_cfg`` as MMEngine users write them. The one paramsched line is
``default_hooks.param_scheduler`` (plus ``custom_imports``, which registers the hook).

``--iters N``: an ``IterBasedTrainLoop`` of N iterations validating every ``--val-interval``
iterations (ReduceOnPlateau decides there) instead of the epoch-based loop.
``--world-size N``: N ranks (gloo on CPU) with the distributed Runner; every rank joins
the same job. ``--stock`` keeps MMEngine's own ``ParamSchedulerHook`` (the reference).
``--resume``: continue from the latest checkpoint in ``--work-dir``. ``--record DIR``
writes what each rank's optimizer held before every iteration (for the tests).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmengine.config import Config
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, HOOKS, METRICS, MODELS
from mmengine.runner import Runner
from mmengine.utils import import_modules_from_strings

CONFIG: dict[str, Any] = dict(
    custom_imports=dict(imports=["paramsched.integrations.mmengine"]),
    model=dict(type="PsExampleModel"),
    train_dataloader=dict(dataset=dict(type="PsExampleData", size=16), batch_size=2,
                          sampler=dict(type="DefaultSampler", shuffle=False),
                          collate_fn=dict(type="default_collate")),
    val_dataloader=dict(dataset=dict(type="PsExampleData", size=8, seed=1000), batch_size=4,
                        sampler=dict(type="DefaultSampler", shuffle=False),
                        collate_fn=dict(type="default_collate")),
    val_evaluator=dict(type="PsValLoss"),
    val_cfg=dict(),
    optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.05, momentum=0.9, weight_decay=1e-4),
                       paramwise_cfg=dict(custom_keys={"head": dict(lr_mult=0.5)})),
    param_scheduler=[
        dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=6),
        dict(type="MultiStepLR", milestones=[3], gamma=0.5),
        # threshold=0.4: only a 40% better validation loss counts as progress
        dict(type="ReduceOnPlateauLR", monitor="loss", patience=0, factor=0.5, threshold=0.4),
    ],
    train_cfg=dict(by_epoch=True, max_epochs=4, val_interval=1),
    randomness=dict(seed=0),  # the same weights every run (so the same val metrics)
    # The one line paramsched needs (server and job_id are filled in by main()):
    default_hooks=dict(param_scheduler=dict(type="ParamschedHook", server="127.0.0.1:50051",
                                            job_id="example-mmengine"),
                       checkpoint=dict(type="CheckpointHook", interval=1),
                       logger=dict(type="LoggerHook", interval=4)),
)


@MODELS.register_module(force=True)
class PsExampleModel(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None,
                mode: str = "tensor") -> Any:
        out = self.head(torch.relu(self.body(x)))
        if mode == "loss":
            return {"loss": torch.nn.functional.mse_loss(out, y)}
        return out


@DATASETS.register_module(force=True)
class PsExampleData(torch.utils.data.Dataset):
    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed = size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed + i)
        x = torch.randn(4, generator=g)
        return {"x": x, "y": x.sum(0, keepdim=True) + 0.1 * torch.randn(1, generator=g)}


@METRICS.register_module(force=True)
class PsValLoss(BaseMetric):
    """The validation loss (the Evaluator gathers it from every rank)."""

    def process(self, data_batch: Any, data_samples: Any) -> None:
        out = torch.stack(list(data_samples))
        self.results.extend(((out - data_batch["y"]) ** 2).mean(1).tolist())

    def compute_metrics(self, results: list) -> dict[str, float]:
        return {"loss": sum(results) / len(results)}


@HOOKS.register_module(force=True)
class PsRecordValues(Hook):
    """Writes every group's lr / momentum / weight_decay before every iteration."""

    priority = "VERY_LOW"

    def __init__(self, path: str) -> None:
        self.path, self.values = path, []

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        self.values.append([{k: g[k] for k in ("lr", "momentum", "weight_decay")}
                            for g in runner.optim_wrapper.param_groups])

    def after_run(self, runner: Any) -> None:
        Path(self.path).write_text(json.dumps(self.values))


def config(args: argparse.Namespace, rank: int) -> Config:
    cfg = copy.deepcopy(CONFIG)
    cfg["work_dir"] = str(args.work_dir)
    cfg["default_hooks"]["param_scheduler"].update(server=args.target, job_id=args.job_id)
    if args.stock:
        cfg["default_hooks"]["param_scheduler"] = dict(type="ParamSchedulerHook")
    if args.iters:
        cfg["train_cfg"] = dict(type="IterBasedTrainLoop", max_iters=args.iters,
                                val_interval=args.val_interval)
        cfg["default_hooks"]["checkpoint"] = dict(type="CheckpointHook", by_epoch=False,
                                                  interval=args.val_interval)
        cfg["param_scheduler"][1] = dict(type="PolyLR", eta_min=0.001, by_epoch=False,
                                         begin=6)
    if args.resume:
        cfg["resume"] = True
    if args.record:
        cfg["custom_hooks"] = [dict(type="PsRecordValues",
                                    path=str(Path(args.record) / f"rank{rank}.json"))]
    # Config.fromfile imports custom_imports for a config file; one built in code must.
    import_modules_from_strings(**cfg["custom_imports"])
    if args.world_size > 1:
        # launcher="pytorch" with the process group already up (gloo): MMEngine's own
        # init_dist would call torch.cuda.set_device; device_ids=None: a CPU module.
        cfg.update(launcher="pytorch",
                   model_wrapper_cfg=dict(type="MMDistributedDataParallel", device_ids=None))
    return Config(cfg)


def worker(rank: int, args: argparse.Namespace, port: int) -> None:
    if args.world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          LOCAL_RANK=str(rank), WORLD_SIZE=str(args.world_size))
        dist.init_process_group("gloo", rank=rank, world_size=args.world_size)
    runner = Runner.from_cfg(config(args, rank))
    runner.train()
    if args.world_size > 1:
        # Every rank done, and the DDP wrapper (whose reducer holds gloo threads) gone,
        # before the group is destroyed: else a rank may abort at exit.
        dist.barrier()
        del runner
        gc.collect()
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "target", nargs="?", default=os.environ.get("PARAMSCHED_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--job-id", default="example-mmengine")
    parser.add_argument("--iters", type=int, default=0)
    parser.add_argument("--val-interval", type=int, default=4)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--stock", action="store_true")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--work-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "paramsched-mmengine")
    parser.add_argument("--record", type=Path)
    args = parser.parse_args()
    # MMEngine 0.10.7 checkpoints hold more than weights: torch >= 2.6 loads them only so.
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    if args.world_size == 1:
        worker(0, args, 0)
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(worker, args=(args, port), nprocs=args.world_size)


if __name__ == "__main__":
    main()
