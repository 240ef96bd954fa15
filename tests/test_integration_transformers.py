"""ParamschedCallback against the stock Hugging Face Trainer, on CPU: the lr of every
param group at every optimizer step (read right before ``optimizer.step()``) and the lr
the Trainer logs are equal, bit for bit, to the stock run's; a resume from the Trainer's
own checkpoint in a new process equals the stock resume (also against an empty server);
two DDP ranks (gloo) join one job.

This file is also the training program of those processes: ``python
tests/test_integration_transformers.py '<json>'`` (see ``worker``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from torch import nn  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from paramsched import Client  # noqa: E402
from paramsched.client import InvalidArgumentError  # noqa: E402
from paramsched.integrations.transformers import ParamschedCallback  # noqa: E402

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from grpc_harness import serving  # noqa: E402

LR = 0.1


class TinyModel(nn.Module):
    """Two layers returning {"loss", "logits"}, as the Trainer wants of a model."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 4)
        self.b = nn.Linear(4, 1)

    def forward(self, x: Any, labels: Any = None) -> dict[str, Any]:
        out = self.b(torch.relu(self.a(x))).squeeze(-1)
        return {"loss": ((out - labels) ** 2).mean(), "logits": out}


class TinyData(torch.utils.data.Dataset):
    def __init__(self, n: int = 12, seed: int = 0) -> None:
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        return {"x": torch.randn(2, generator=g), "labels": torch.randn((), generator=g)}


class Record(TrainerCallback):
    """Every group's lr while each optimizer step runs."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.lrs.append([g["lr"] for g in kwargs["optimizer"].param_groups])


def run(output_dir: str | Path, training: dict[str, Any], callback: dict[str, Any] | None,
        *, groups: bool = False, resume: str | None = None) -> dict[str, Any]:
    """One Trainer run; ``callback``: ParamschedCallback's arguments (None: stock)."""
    torch.manual_seed(0)
    model = TinyModel()
    optimizers: tuple[Any, Any] = (None, None)
    if groups:  # two groups with their own lrs; the Trainer still builds its scheduler
        optimizers = (torch.optim.AdamW(
            [{"params": model.a.parameters()},
             {"params": model.b.parameters(), "lr": LR * 0.3, "weight_decay": 0.0}],
            lr=LR, weight_decay=0.01), None)
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=2, learning_rate=LR,
        report_to="none", logging_steps=1, use_cpu=True, disable_tqdm=True,
        save_strategy=training.pop("save_strategy", "no"), **training)
    record = Record()
    callbacks: list[Any] = [record]
    if callback is not None:
        callbacks.append(ParamschedCallback(**callback))
    trainer = Trainer(model=model, args=args, train_dataset=TinyData(),
                      eval_dataset=TinyData(4, seed=1), callbacks=callbacks,
                      optimizers=optimizers)
    trainer.train(resume_from_checkpoint=resume)
    logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    return {"lrs": record.lrs, "logged": logged, "max_steps": trainer.state.max_steps,
            "last_lr": list(trainer.lr_scheduler.get_last_lr())}


def worker(spec: dict[str, Any]) -> None:
    """The program of a new process (one DDP rank of it): ``spec["runs"]``, one by one."""
    results = [run(r["output_dir"], r["training"], r["callback"],
                   groups=r.get("groups", False), resume=r.get("resume"))
               for r in spec["runs"]]
    rank = int(os.environ.get("RANK", "0"))
    Path(f"{spec['out']}.{rank}").write_text(json.dumps(results))


def in_new_process(tmp_path: Path, runs: list[dict[str, Any]], *, world: int = 1,
                   timeout: float = 240) -> list[list[dict[str, Any]]]:
    """``runs`` (``run``'s arguments) one after the other in a new process, or in
    ``world`` DDP rank processes (gloo); per rank, the result of each run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if world > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                "WORLD_SIZE": str(world)}
    out = tmp_path / f"result-{os.urandom(4).hex()}"
    procs = []
    for rank in range(world):
        rank_env = dict(env)
        if world > 1:
            rank_env |= {"RANK": str(rank), "LOCAL_RANK": str(rank)}
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE), json.dumps({"runs": runs, "out": str(out)})],
            env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-4000:]
    return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(world)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with serving(data_dir=tmp_path_factory.mktemp("store")) as (srv, _stub):
        yield srv


CASES: dict[str, dict[str, Any]] = {
    "linear_warmup_accumulation_epochs": dict(
        lr_scheduler_type="linear", warmup_steps=3, gradient_accumulation_steps=2,
        num_train_epochs=3),
    "cosine_warmup_ratio_two_groups": dict(
        lr_scheduler_type="cosine", warmup_steps=0.25, max_steps=9, weight_decay=0.01),
    "cosine_with_restarts": dict(
        lr_scheduler_type="cosine_with_restarts", warmup_steps=1, max_steps=11,
        lr_scheduler_kwargs={"num_cycles": 3}),
    "polynomial_two_groups": dict(
        lr_scheduler_type="polynomial", warmup_steps=2, max_steps=8,
        lr_scheduler_kwargs={"lr_end": 1e-3, "power": 2.0}),
    "constant": dict(lr_scheduler_type="constant", max_steps=4),
    "constant_with_warmup_accumulation": dict(
        lr_scheduler_type="constant_with_warmup", warmup_steps=3,
        gradient_accumulation_steps=3, num_train_epochs=2),
    "inverse_sqrt": dict(lr_scheduler_type="inverse_sqrt", warmup_steps=2, max_steps=9),
    "cosine_with_min_lr": dict(
        lr_scheduler_type="cosine_with_min_lr", warmup_steps=2, max_steps=9,
        lr_scheduler_kwargs={"min_lr": 0.003}),
    "warmup_stable_decay": dict(
        lr_scheduler_type="warmup_stable_decay", warmup_steps=2, max_steps=10,
        lr_scheduler_kwargs={"num_decay_steps": 4, "decay_type": "1-sqrt",
                             "min_lr_ratio": 0.1}),
}
GROUPS = {"cosine_warmup_ratio_two_groups", "polynomial_two_groups"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_lr_at_every_step_equals_the_stock_trainer(name: str, server: Any,
                                                         tmp_path: Path) -> None:
    groups = name in GROUPS
    stock = run(tmp_path / "stock", dict(CASES[name]), None, groups=groups)
    ours = run(tmp_path / "ours", dict(CASES[name]),
               {"server": server.target, "job_id": f"hf-{name}"}, groups=groups)
    assert len(stock["lrs"]) == stock["max_steps"] > 0
    assert ours["lrs"] == stock["lrs"]
    assert ours["logged"] == stock["logged"]  # get_last_lr() reports the served lr
    assert ours["last_lr"] == stock["last_lr"]  # and after the last step
    with Client(server.target) as client:  # the server served them: it counted every step
        job = client.get_job(f"hf-{name}")
    assert job.max_iters == stock["max_steps"]
    assert [p.iteration for p in job.progress] == [stock["max_steps"]]


PLATEAU: dict[str, dict[str, Any]] = {
    # mode="max" on a loss that mostly falls: most evaluations are "bad", so the lr is cut
    "steps": dict(lr_scheduler_type="reduce_lr_on_plateau", max_steps=9, eval_strategy="steps",
                  eval_steps=2, lr_scheduler_kwargs={"mode": "max", "patience": 0,
                                                     "factor": 0.5}),
    "epochs_accumulation": dict(
        lr_scheduler_type="reduce_lr_on_plateau", num_train_epochs=4, eval_strategy="epoch",
        gradient_accumulation_steps=2, metric_for_best_model="loss",
        lr_scheduler_kwargs={"mode": "max", "patience": 0, "factor": 0.7, "min_lr": 0.03}),
    "steps_with_eval_delay": dict(
        lr_scheduler_type="reduce_lr_on_plateau", max_steps=8, eval_strategy="steps",
        eval_steps=2, eval_delay=4, lr_scheduler_kwargs={"mode": "max", "patience": 0}),
}


@pytest.mark.parametrize("name", sorted(PLATEAU))
def test_reduce_lr_on_plateau_decides_on_the_trainers_evaluations(name: str, server: Any,
                                                                  tmp_path: Path) -> None:
    stock = run(tmp_path / "stock", dict(PLATEAU[name]), None, groups=True)
    ours = run(tmp_path / "ours", dict(PLATEAU[name]),
               {"server": server.target, "job_id": f"hf-plateau-{name}"}, groups=True)
    assert len({row[0] for row in stock["lrs"]}) > 1  # the stock run did cut its lr
    assert ours["lrs"] == stock["lrs"] and ours["logged"] == stock["logged"]
    assert ours["last_lr"] == stock["last_lr"]


def test_linear_schedule_ends_at_exactly_zero(server: Any, tmp_path: Path) -> None:
    training = dict(lr_scheduler_type="linear", max_steps=5)
    ours = run(tmp_path, training, {"server": server.target, "job_id": "hf-zero"})
    # the Trainer's two groups (weight decay or not), from LR down by LR / 5 a step
    assert ours["lrs"][0] == [LR] * 2 and ours["lrs"][-1] == [LR * (1 / 5)] * 2
    assert ours["last_lr"] == [0.0] * 2  # step 5's lr, where HF's linear decay ends


def test_an_mmengine_param_scheduler_list_is_served_instead(server: Any,
                                                            tmp_path: Path) -> None:
    config = [dict(type="LinearLR", start_factor=0.25, by_epoch=False, end=3),
              dict(type="MultiStepLR", milestones=[5], gamma=0.5, by_epoch=False)]
    training = dict(lr_scheduler_type="cosine", max_steps=8)  # not what is served
    ours = run(tmp_path, dict(training),
               {"server": server.target, "job_id": "hf-mmengine", "param_scheduler": config},
               groups=True)
    with Client(server.target) as client:
        expected = client.preview(config, [{"lr": LR, "weight_decay": 0.01},
                                           {"lr": LR * 0.3, "weight_decay": 0.0}],
                                  max_iters=8)
    lrs = [[g["lr"] for g in row] for row in expected.rows[:8]]
    assert ours["lrs"] == lrs
    assert ours["lrs"] != run(tmp_path / "stock", dict(training), None, groups=True)["lrs"]


def test_a_bad_param_scheduler_names_its_index_type_and_field(server: Any,
                                                              tmp_path: Path) -> None:
    config = [dict(type="ConstantLR", factor=1.0),
              dict(type="HFPolynomialLR", by_epoch=False, lr_init=0.1, lr_end=0.5)]
    with pytest.raises(InvalidArgumentError,
                       match=r"param_scheduler\[1\]\.lr_end: \(HFPolynomialLR\) must be"):
        run(tmp_path, dict(lr_scheduler_type="linear", max_steps=3),
            {"server": server.target, "job_id": "hf-bad", "param_scheduler": config})


def test_unknown_client_options_are_refused() -> None:
    with pytest.raises(TypeError, match="wait_timout"):
        ParamschedCallback(server="127.0.0.1:1", job_id="j", wait_timout=3)


RESUME: dict[str, dict[str, Any]] = {
    "cosine_accumulation": dict(
        lr_scheduler_type="cosine", warmup_steps=2, max_steps=8, gradient_accumulation_steps=2,
        save_strategy="steps", save_steps=4),
    # evaluated at steps 2, 4, 6, 8: the checkpoint at 4 holds that step's decision
    "plateau_eval_steps": dict(
        lr_scheduler_type="reduce_lr_on_plateau", max_steps=8, eval_strategy="steps",
        eval_steps=2, save_strategy="steps", save_steps=4,
        lr_scheduler_kwargs={"mode": "max", "patience": 0, "factor": 0.5}),
    # 6 steps an epoch, evaluated at epoch ends, saved at step 6 before that evaluation:
    # the checkpoint's decision is pending, and a resume makes it without metrics
    "plateau_eval_epochs_saved_first": dict(
        lr_scheduler_type="reduce_lr_on_plateau", num_train_epochs=2, eval_strategy="epoch",
        save_strategy="steps", save_steps=6,
        lr_scheduler_kwargs={"mode": "max", "patience": 0, "factor": 0.5}),
}


@pytest.mark.parametrize("name", sorted(RESUME))
def test_resume_in_a_new_process_equals_the_stock_resume(name: str, server: Any,
                                                         tmp_path: Path) -> None:
    training = RESUME[name]
    at = training["save_steps"]
    job = {"server": server.target, "job_id": f"hf-resume-{name}"}
    stock_full = run(tmp_path / "stock", dict(training), None, groups=True)
    ours_full = run(tmp_path / "ours", dict(training), job, groups=True)
    assert ours_full["lrs"] == stock_full["lrs"]
    folder = tmp_path / "ours" / f"checkpoint-{at}"
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["ParamschedCallback"]["attributes"]["schedule"]
    for copy in ("ours-empty", "ours-restored"):  # runs of their own
        shutil.copytree(tmp_path / "ours", tmp_path / copy)

    def resumed(folder: str, callback: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        return {"output_dir": str(tmp_path / folder), "training": dict(training, **extra),
                "callback": callback, "groups": True,
                "resume": str(tmp_path / folder / f"checkpoint-{at}")}

    stock_resume = resumed("stock", None)
    stock = run(stock_resume.pop("output_dir"), stock_resume.pop("training"), None,
                groups=True, resume=stock_resume["resume"])
    if not name.endswith("saved_first"):
        assert stock["lrs"] == stock_full["lrs"][at:]
    with serving(data_dir=tmp_path / "empty-store") as (empty, _stub):  # never saw the job
        with Client(empty.target) as client:
            assert not list(client.list_jobs())
        ours, again, restored = in_new_process(tmp_path, [
            resumed("ours", job), resumed("ours-empty", {**job, "server": empty.target}),
            # the Trainer rebuilds the callback from its saved args and attributes
            resumed("ours-restored", job, restore_callback_states_from_checkpoint=True)])[0]
    assert ours["lrs"] == stock["lrs"] and ours["logged"] == stock["logged"]
    assert again["lrs"] == stock["lrs"] and restored["lrs"] == stock["lrs"]


def test_resume_without_the_schedule_state_is_refused(server: Any, tmp_path: Path) -> None:
    training = RESUME["cosine_accumulation"]
    run(tmp_path, dict(training, max_steps=4), None)  # a stock checkpoint
    with pytest.raises(ValueError, match="without the schedule state"):
        run(tmp_path, dict(training), {"server": server.target, "job_id": "hf-nostate"},
            resume=str(tmp_path / "checkpoint-4"))


def test_two_ddp_ranks_join_one_job(server: Any, tmp_path: Path) -> None:
    training = dict(lr_scheduler_type="linear", warmup_steps=2, max_steps=5,
                    ddp_backend="gloo")
    ranks = [results[0] for results in in_new_process(tmp_path, [{
        "output_dir": str(tmp_path / "ddp"), "training": training,
        "callback": {"server": server.target, "job_id": "hf-ddp"}}], world=2)]
    stock = run(tmp_path / "stock", {k: v for k, v in training.items() if k != "ddp_backend"},
                None)
    assert ranks[0]["lrs"] == ranks[1]["lrs"] == stock["lrs"]
    with Client(server.target) as client:
        job = client.get_job("hf-ddp")
    assert job.world_size == 2


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
