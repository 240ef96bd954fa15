"""ParamschedCallback against the stock Lightning run, with the real Trainer on CPU: the
lr (and momentum) of every param group at every optimizer step are equal, bit for bit,
for the torch schedulers ``configure_optimizers`` returns; a resume from Lightning's own
checkpoint in a new process equals the stock resume; two DDP ranks get the same values.

This file is also the worker the resume and DDP tests launch (``python this_file ...``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.plugins import MixedPrecision  # noqa: E402
from torch.optim import lr_scheduler as S  # noqa: E402

from paramsched.integrations.lightning import ParamschedCallback  # noqa: E402

HERE = Path(__file__).resolve().parent
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*lr_scheduler.step.*")


# ---------------------------------------------------------------------- the training

def _schedules(name: str, opt: Any, steps: int) -> Any:
    """configure_optimizers' scheduler part for each case (``steps``: optimizer steps)."""
    if name == "sequential":
        return {"scheduler": S.SequentialLR(opt, [S.LinearLR(opt, 0.1, total_iters=3),
                                                 S.CosineAnnealingLR(opt, T_max=4)], [3]),
                "interval": "step"}
    if name == "epoch_and_step":
        return [{"scheduler": S.ExponentialLR(opt, 0.9), "interval": "step", "frequency": 3},
                {"scheduler": S.StepLR(opt, 2, 0.5), "interval": "epoch"}]
    if name == "one_cycle":
        return {"scheduler": S.OneCycleLR(opt, [0.5, 0.05], total_steps=steps,
                                          pct_start=0.25, three_phase=True),
                "interval": "step"}
    if name == "multistep_frequency":
        return {"scheduler": S.MultiStepLR(opt, [1, 3, 4], 0.5), "interval": "step",
                "frequency": 2}
    if name == "poly_constant":
        return [{"scheduler": S.ConstantLR(opt, 0.5, total_iters=2), "interval": "step"},
                {"scheduler": S.PolynomialLR(opt, total_iters=5, power=2.0),
                 "interval": "step"}]
    if name == "plateau_epoch":
        return {"scheduler": S.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.5),
                "monitor": "val_loss", "interval": "epoch"}
    if name == "plateau_every_2nd_epoch":
        return {"scheduler": S.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0,
                                                 threshold=0.5, threshold_mode="abs"),
                "monitor": "val_loss", "interval": "epoch", "frequency": 2}
    if name == "plateau_step":
        return [{"scheduler": S.LinearLR(opt, 0.5, total_iters=4), "interval": "step"},
                {"scheduler": S.ReduceLROnPlateau(opt, factor=0.7, patience=1, threshold=0.9,
                                                  mode="min"),
                 "monitor": "train_loss", "interval": "step", "frequency": 2}]
    if name.startswith("matrix:"):  # "matrix:<kind>:<interval>:<frequency>"
        _, kind, interval, frequency = name.split(":")
        return {"scheduler": MATRIX[kind](opt, steps), "interval": interval,
                "frequency": int(frequency)}
    if name == "never_stepped":  # frequency above the batches: only its constructor acts
        return {"scheduler": S.LinearLR(opt, 0.3, total_iters=2), "interval": "step",
                "frequency": 50}
    if name == "none":
        return None
    raise KeyError(name)


MATRIX = {
    "linear": lambda o, n: S.LinearLR(o, 0.2, 0.9, total_iters=3),
    "constant": lambda o, n: S.ConstantLR(o, 0.3, total_iters=2),
    "step": lambda o, n: S.StepLR(o, 2, 0.6),
    "multistep": lambda o, n: S.MultiStepLR(o, [1, 2, 2, 5], 0.7),
    "exponential": lambda o, n: S.ExponentialLR(o, 0.8),
    "cosine": lambda o, n: S.CosineAnnealingLR(o, T_max=2, eta_min=0.001),
    "polynomial": lambda o, n: S.PolynomialLR(o, total_iters=4, power=0.5),
    "one_cycle": lambda o, n: S.OneCycleLR(o, 0.3, total_steps=n, anneal_strategy="linear"),
    "chained": lambda o, n: S.ChainedScheduler([S.LinearLR(o, 0.5, total_iters=3),
                                                S.ExponentialLR(o, 0.9)]),
    "warmup_cosine": lambda o, n: S.SequentialLR(
        o, [S.LinearLR(o, 0.01, total_iters=2), S.ExponentialLR(o, 0.9),
            S.CosineAnnealingLR(o, T_max=3)], [2, 4]),
}


class Tiny(pl.LightningModule):
    def __init__(self, schedule: str, optim: str = "sgd", steps: int = 0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(3, 3)
        self.b = torch.nn.Linear(3, 1)
        self.schedule, self.optim, self.steps = schedule, optim, steps

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = ((self.b(self.a(x)) - y) ** 2).mean()
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", ((self.b(self.a(x)) - y) ** 2).mean())

    def configure_optimizers(self) -> Any:
        groups = [{"params": self.a.parameters(), "lr": 0.1},
                  {"params": self.b.parameters(), "lr": 0.02}]
        if self.optim == "adam":
            opt = torch.optim.Adam(groups)
        else:
            opt = torch.optim.SGD(groups, momentum=0.9)
        schedule = _schedules(self.schedule, opt, self.steps)
        if schedule is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": schedule} if isinstance(schedule, dict) \
            else ([opt], schedule)


class Record(pl.Callback):
    """Every group's lr and momentum right before each optimizer step (and after the
    last one), plus how many steps AMP's scaler skipped."""

    def __init__(self) -> None:
        self.values: list[list[tuple[float, float]]] = []

    def _read(self, trainer: Any) -> None:
        row = []
        for g in trainer.optimizers[0].param_groups:
            momentum = g["betas"][0] if "betas" in g else g["momentum"]
            row.append((float(g["lr"]), float(momentum)))
        self.values.append(row)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self._read(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._read(trainer)


class RecordAfterStep(Record):
    """The same, read in on_train_batch_end (Lightning has stepped its schedulers)."""

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        pass

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self._read(trainer)


def loaders(n: int = 8, batch: int = 2) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    return (torch.utils.data.DataLoader(data, batch_size=batch),
            torch.utils.data.DataLoader(data, batch_size=4))


def fit(schedule: str, *, callback: ParamschedCallback | None = None, optim: str = "sgd",
        steps: int = 0, ckpt_path: str | None = None, checkpoint_dir: Path | None = None,
        samples: int = 8, **trainer_args: Any) -> Record:
    record, after = Record(), RecordAfterStep()
    record.after = after.values  # type: ignore[attr-defined]
    callbacks: list[Any] = [record, after]
    if callback is not None:
        callbacks.append(callback)  # added last, as a user would
    if checkpoint_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, every_n_train_steps=2,
                                         save_top_k=-1, filename="{step}"))
    args: dict[str, Any] = dict(accelerator="cpu", devices=1, max_epochs=3, logger=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                enable_checkpointing=checkpoint_dir is not None,
                                num_sanity_val_steps=0)
    args.update(trainer_args)
    trainer = pl.Trainer(callbacks=callbacks, **args)
    train, val = loaders(samples)
    trainer.fit(Tiny(schedule, optim, steps), train, val, ckpt_path=ckpt_path)
    record.trainer = trainer  # type: ignore[attr-defined]
    return record


# ---------------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Any:
    from grpc_harness import serving

    with serving(data_dir=tmp_path_factory.mktemp("store")) as (srv, _stub):
        yield srv


def _callback(server: Any, job: str, **kwargs: Any) -> ParamschedCallback:
    return ParamschedCallback(server=server.target, job_id=job, wait_timeout=20.0, **kwargs)


CASES = [
    ("sequential", {}),
    ("epoch_and_step", {"accumulate_grad_batches": 3}),  # 4 batches: steps at 2 and 3
    ("one_cycle", {"max_steps": 10, "max_epochs": -1}),
    ("multistep_frequency", {}),
    ("poly_constant", {"max_steps": 7, "max_epochs": -1}),  # ends mid-epoch
    ("plateau_epoch", {}),
    ("plateau_step", {"val_check_interval": 2}),
    ("never_stepped", {}),
    ("plateau_every_2nd_epoch", {"max_epochs": 6, "accumulate_grad_batches": 3}),
]


@pytest.mark.parametrize(("schedule", "trainer_args"), CASES, ids=[c[0] for c in CASES])
def test_callback_serves_the_stock_schedule(server, schedule, trainer_args):
    optim = "adam" if schedule == "one_cycle" else "sgd"
    steps = 10 if schedule == "one_cycle" else 0
    stock = fit(schedule, optim=optim, steps=steps, **trainer_args)
    ours = fit(schedule, optim=optim, steps=steps,
               callback=_callback(server, f"lt-{schedule}"), **trainer_args)
    assert len(stock.values) > 4
    assert ours.values == stock.values
    if schedule != "plateau_step":
        # Read in on_train_batch_end too (Lightning has stepped its schedulers by then). Not
        # for a per-step plateau next to another scheduler: until Lightning has stepped the
        # plateau, after validation, the optimizer holds the previous step's values.
        assert ours.after == stock.after
    # The schedule moved (the test would catch a callback that served nothing).
    assert stock.values[0][0][0] != 0.1 or len({row[0][0] for row in stock.values}) > 1
    if schedule.startswith("plateau"):
        assert len({row[0][0] for row in stock.values}) > 1, "the plateau never reduced"
    assert all(  # Lightning steps none of the torch schedulers
        not isinstance(c.scheduler, S.LRScheduler | S.ReduceLROnPlateau)
        for c in ours.trainer.lr_scheduler_configs)


MATRIX_CASES = [
    (kind, interval, frequency, accumulate)
    for kind in sorted(MATRIX)
    for interval, frequency, accumulate in (("step", 1, 1), ("step", 3, 2), ("epoch", 2, 3))
    if not (kind == "one_cycle" and interval == "epoch")
]


def test_every_scheduler_interval_frequency_and_accumulation(server):
    # 5 batches of 2: with accumulation 2 Lightning steps after batches 1, 3 and 4.
    for kind, interval, frequency, accumulate in MATRIX_CASES:
        name = f"matrix:{kind}:{interval}:{frequency}"
        args = {"accumulate_grad_batches": accumulate, "max_epochs": 4}
        steps = 4 * -(-5 // accumulate)
        stock = fit(name, steps=steps, samples=10, **args)
        job = "lt-" + name.replace(":", "-")
        ours = fit(name, steps=steps, samples=10, callback=_callback(server, job), **args)
        assert len(stock.values) == steps + 1
        assert ours.values == stock.values, name


def test_amp_skipped_steps_count_as_in_lightning(server):
    def precision() -> Any:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
        return [MixedPrecision("16-mixed", "cpu", scaler=scaler)]

    stock = fit("sequential", plugins=precision())
    ours = fit("sequential", plugins=precision(), callback=_callback(server, "lt-amp"))
    scale = ours.trainer.precision_plugin.scaler.get_scale()
    assert scale < 2.0**40  # steps were skipped
    assert ours.values == stock.values


def test_mmengine_param_scheduler_list(server):
    config = [{"type": "LinearLR", "start_factor": 0.25, "by_epoch": False, "end": 4},
              {"type": "CosineAnnealingLR", "T_max": 3, "by_epoch": True, "begin": 0}]
    ours = fit("none", callback=_callback(server, "lt-mm", param_scheduler=config))
    # An epoch-based job: 4 optimizer steps per epoch, 3 epochs, as the engine computes it.
    from paramsched.server.schedules import Timeline, build_job_spec

    initial = [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.02, "momentum": 0.9}]
    spec = build_job_spec(config, initial, epoch_length=4, max_epochs=3)
    expected = [[g["lr"] for g in row] for row in Timeline(spec).values_range(0, 13)]
    assert [[lr for lr, _ in row] for row in ours.values] == expected
    assert len({row[0] for row in expected}) > 4


def test_unsupported_scheduler_is_a_clear_error(server):
    class Cyclic(Tiny):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            return [opt], [S.CyclicLR(opt, 0.01, 0.1)]

    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, num_sanity_val_steps=0,
                         callbacks=[_callback(server, "lt-cyclic")])
    with pytest.raises(ValueError, match="cannot serve the lr scheduler CyclicLR"):
        trainer.fit(Cyclic("none"), loaders()[0])


def test_state_after_fit_carries_the_schedule(server):
    callback = _callback(server, "lt-after-fit")
    fit("sequential", callback=callback)
    state = callback.state_dict()  # what trainer.save_checkpoint() after fit would save
    assert state["format"] == "paramsched.lightning/v1"
    assert state["schedule"]["iteration"] == 12  # 3 epochs of 4 steps
    assert [g["lr"] for g in state["initial"]] == [0.1, 0.02]


def test_unknown_client_option_is_named():
    with pytest.raises(TypeError, match="plan_sise"):
        ParamschedCallback(server="x:1", job_id="j", plan_sise=3)


def _worker(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    environ = dict(os.environ, PYTHONPATH=str(HERE), **(env or {}))
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args],
                            env=environ, stdout=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen, timeout: float = 240) -> Any:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


#: (schedule, checkpoint): mid-epoch, and (plateau) at an epoch end before its decision.
RESUMES = [("sequential", "step=6.ckpt"), ("plateau_epoch", "step=2.ckpt"),  # best = inf
           ("plateau_epoch", "step=6.ckpt"),
           ("plateau_epoch", "step=8.ckpt"), ("plateau_step", "step=4.ckpt"),
           ("sequential", "step=4.ckpt", "empty server")]


@pytest.fixture(scope="module")
def launched(server, tmp_path_factory):
    """The new processes of the resume and DDP tests, started together (Lightning's
    import dominates their time): the uninterrupted runs that wrote the checkpoints,
    and the worker processes."""
    root = tmp_path_factory.mktemp("resume")
    full, jobs = {}, []
    for schedule in sorted({r[0] for r in RESUMES}):
        job = f"lt-resume-{schedule}"
        stock = fit(schedule, checkpoint_dir=root / schedule / "stock")
        ours = fit(schedule, checkpoint_dir=root / schedule / "ours",
                   callback=_callback(server, job))
        full[schedule] = (stock.values, ours.values)
    for schedule, ckpt, *empty in RESUMES:
        jobs.append([schedule, str(root / schedule / "stock" / ckpt), "", ""])
        jobs.append([schedule, str(root / schedule / "ours" / ckpt),
                     "empty" if empty else server.target, f"lt-resume-{schedule}"])
    resume = _worker("resume", json.dumps(jobs))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ddp = [_worker("ddp", server.target, env={
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
        "NODE_RANK": "0", "LOCAL_RANK": str(rank), "RANK": str(rank)}) for rank in (0, 1)]
    yield {"full": full, "resume": resume, "ddp": ddp}
    for proc in [resume, *ddp]:
        if proc.poll() is None:
            proc.kill()


def test_resume_from_lightning_checkpoint_in_new_process(launched):
    for schedule, (stock, ours) in launched["full"].items():
        assert ours == stock, schedule
    results = _result(launched["resume"])
    for i, (schedule, ckpt, *_) in enumerate(RESUMES):
        stock_resume, our_resume = results[2 * i], results[2 * i + 1]
        assert our_resume == stock_resume, (schedule, ckpt)
        step = int(ckpt.removeprefix("step=").removesuffix(".ckpt"))
        assert len(our_resume) == len(launched["full"][schedule][0]) - step


def test_two_ddp_ranks_share_one_job(launched):
    # Two processes of one DDP run (launched here, as a cluster launcher would); each
    # rank trains on half of the 8 samples: the stock schedule of 2 batches per epoch.
    stock = fit("epoch_and_step", samples=4)
    results = [_result(p) for p in launched["ddp"]]
    expected = [[list(pair) for pair in row] for row in stock.values]
    assert results[0] == results[1] == expected


# ---------------------------------------------------------------------- the worker

def _main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "resume":  # each job: schedule, checkpoint, server ("": stock), job id
        out = []
        for schedule, ckpt, target, job in json.loads(argv[1]):
            if target != "empty":
                callback = (ParamschedCallback(server=target, job_id=job, wait_timeout=20.0)
                            if target else None)
                out.append(fit(schedule, callback=callback, ckpt_path=ckpt).values)
                continue
            from grpc_harness import serving  # a new server that never saw the job

            with tempfile.TemporaryDirectory() as store, serving(data_dir=store) as (srv, _):
                callback = ParamschedCallback(server=srv.target, job_id=job, wait_timeout=20.0)
                out.append(fit(schedule, callback=callback, ckpt_path=ckpt).values)
        print(json.dumps(out))
    else:  # ddp
        callback = ParamschedCallback(server=argv[1], job_id="lt-ddp", wait_timeout=20.0)
        record = fit("epoch_and_step", callback=callback, strategy="ddp", devices=2)
        print(json.dumps(record.values))


if __name__ == "__main__":
    _main(sys.argv[1:])
