"""A Lightning Trainer on a tiny model, its schedule served by paramsched (one callback added).

    paramsched serve --port 50051 --data-dir /tmp/paramsched      # in another shell
    python examples/train_lightning.py 127.0.0.1:50051

``configure_optimizers`` is ordinary Lightning code: a warm-up then cosine
(``SequentialLR``, stepped every optimizer step) and a ``ReduceLROnPlateau`` on the
validation loss. The one paramsched line is ``callbacks=[ParamschedCallback(...)]``.
``--stock`` trains without it (the reference); ``--checkpoint-dir DIR`` saves Lightning
checkpoints every 4 steps and ``--resume CKPT`` continues from one (the schedule's
state is in the checkpoint); ``--accumulate N`` accumulates gradients.
Nothing is downloaded: the data are random tensors.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.optim import lr_scheduler

from paramsched.integrations.lightning import ParamschedCallback


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD([{"params": self.net[0].parameters(), "lr": 0.05},
                               {"params": self.net[2].parameters(), "lr": 0.01}], momentum=0.9)
        warmup_cosine = lr_scheduler.SequentialLR(
            opt, [lr_scheduler.LinearLR(opt, 0.01, total_iters=5),
                  lr_scheduler.CosineAnnealingLR(opt, T_max=40, eta_min=1e-4)], [5])
        plateau = lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
        return [opt], [{"scheduler": warmup_cosine, "interval": "step"},
                       {"scheduler": plateau, "monitor": "val_loss", "interval": "epoch"}]


def loaders() -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(64, 1, generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    return (torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, generator=g),
            torch.utils.data.DataLoader(data, batch_size=32))


class PrintLR(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lrs = [f"{g['lr']:.6f}" for g in trainer.optimizers[0].param_groups]
        print(f"epoch {trainer.current_epoch} starts at step {trainer.global_step}: lr {lrs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server", nargs="?", default=os.environ.get("PARAMSCHED_TARGET"))
    parser.add_argument("--job-id", default="lightning-example")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--stock", action="store_true", help="no paramsched (the reference)")
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--resume", help="a Lightning checkpoint to continue from")
    args = parser.parse_args()
    pl.seed_everything(0, verbose=False)  # the same weights, data order and val losses
    callbacks: list[pl.Callback] = [PrintLR()]
    if not args.stock:
        if not args.server:
            parser.error("give the server address (or PARAMSCHED_TARGET), or --stock")
        callbacks.append(ParamschedCallback(server=args.server, job_id=args.job_id))
    if args.checkpoint_dir:
        callbacks.append(ModelCheckpoint(dirpath=args.checkpoint_dir, every_n_train_steps=4,
                                         save_top_k=-1, filename="{step}"))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=args.epochs, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=bool(args.checkpoint_dir),
                         accumulate_grad_batches=args.accumulate, callbacks=callbacks)
    train, val = loaders()
    trainer.fit(Tiny(), train, val, ckpt_path=args.resume)


if __name__ == "__main__":
    main()
