"""ParamschedHook against the stock ParamSchedulerHook, with the real MMEngine Runner
on CPU: the lr / momentum / weight_decay of every group (the OptimWrapper's base group
included) before every training iteration are equal, bit for bit."""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import pytest

pytest.importorskip("cv2", reason="MMEngine's Runner imports cv2 (opencv-python-headless)")
torch = pytest.importorskip("torch")
pytest.importorskip("mmengine")

from mmengine.evaluator import BaseMetric, Evaluator  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmengine.registry import OPTIM_WRAPPERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from paramsched import Client  # noqa: E402
from paramsched.integrations.mmengine import ParamschedHook  # noqa: E402  (registers it)

from grpc_harness import serving  # noqa: E402

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
KEYS = ("lr", "momentum", "weight_decay")


class TinyModel(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(2, 2)
        self.b = torch.nn.Linear(2, 1)
        self.poison = False  # set by Poison: this iteration's loss overflows

    def forward(self, x, y=None, mode="tensor"):
        out = self.b(self.a(x))
        if mode == "loss":
            loss = ((out - y) ** 2).mean()
            return {"loss": loss * math.inf if self.poison else loss}
        return out


class TinyData(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(2, generator=g), "y": torch.randn(1, generator=g)}


class ValLoss(BaseMetric):
    """The validation loss of the model being trained: real metrics that depend on
    the weights, so on every value the schedule handed out before."""

    def process(self, data_batch, data_samples) -> None:
        out = torch.stack(list(data_samples))  # the Evaluator splits the batch
        self.results.append(((out - data_batch["y"]) ** 2).mean().item())

    def compute_metrics(self, results: list) -> dict:
        return {"loss": sum(results) / len(results)}


class Record(Hook):
    priority = "VERY_LOW"

    def __init__(self, out: list) -> None:
        self.out = out

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        groups = runner.optim_wrapper.param_groups
        if isinstance(groups, dict):  # an OptimWrapperDict: optimizer name -> groups
            self.out.append({name: [tuple(g.get(k) for k in KEYS) for g in gs]
                             for name, gs in groups.items()})
        else:
            self.out.append([tuple(g.get(k) for k in KEYS) for g in groups])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # A store of its own: the default data dir outlives the test run.
    with serving(data_dir=tmp_path_factory.mktemp("store")) as (srv, _stub):
        yield srv


def loader() -> dict:
    return dict(dataset=TinyData(), batch_size=2, shuffle=False,
                sampler=dict(type="DefaultSampler", shuffle=False),
                collate_fn=dict(type="default_collate"))


def run(tmp_path, cfg: dict, hook: dict | None, *, model: Any = None, hooks: tuple = (),
        checkpoint: dict | None = None, resume: bool = False, runner_out: list | None = None,
        **runner_kw: Any) -> list:
    """Train ``cfg`` with the real Runner; what every group held before every iteration.
    ``hook``: the param_scheduler hook (None: the stock one)."""
    cfg = copy.deepcopy(cfg)
    out: list = []
    torch.manual_seed(0)  # the same weights, so the same validation metrics
    val: dict = {}
    if "val_cfg" in cfg:
        val = dict(val_dataloader=loader(), val_evaluator=Evaluator([ValLoss()]),
                   val_cfg=cfg["val_cfg"])
    default_hooks = dict(logger=dict(type="LoggerHook", interval=100),
                         checkpoint=checkpoint or dict(type="CheckpointHook", interval=1000))
    if hook is not None:
        default_hooks["param_scheduler"] = hook
    runner = Runner(
        model=model if model is not None else TinyModel(), work_dir=str(tmp_path),
        train_dataloader=loader(), optim_wrapper=runner_kw.pop("optim_wrapper", None)
        or cfg["optim_wrapper"], param_scheduler=cfg["param_scheduler"],
        train_cfg=cfg["train_cfg"], default_hooks=default_hooks,
        custom_hooks=[Record(out), *hooks], cfg=copy.deepcopy(cfg), resume=resume,
        **val, **runner_kw)
    if runner_out is not None:
        runner_out.append(runner)
    runner.train()
    return out


SGD = dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4))
CASES = {
    "warmup_multistep_by_epoch": dict(
        optim_wrapper=SGD,
        param_scheduler=[dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=4),
                         dict(type="MultiStepLR", milestones=[2, 3], gamma=0.5)],
        train_cfg=dict(by_epoch=True, max_epochs=4)),
    "converted_cosine_two_groups": dict(
        optim_wrapper=dict(SGD, paramwise_cfg=dict(custom_keys={"b": dict(lr_mult=0.1)})),
        param_scheduler=[dict(type="CosineAnnealingLR", T_max=3, by_epoch=True,
                              convert_to_iter_based=True),
                         dict(type="CosineAnnealingMomentum", T_max=3, by_epoch=True)],
        train_cfg=dict(by_epoch=True, max_epochs=3)),
    "iter_based_poly": dict(
        optim_wrapper=SGD,
        param_scheduler=[dict(type="PolyLR", power=2.0, eta_min=0.001, by_epoch=False)],
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=7)),
    "accumulation": dict(
        optim_wrapper=dict(SGD, accumulative_counts=2),
        param_scheduler=[dict(type="StepLR", step_size=1, gamma=0.5, by_epoch=False)],
        train_cfg=dict(by_epoch=True, max_epochs=2)),
    "onecycle_adam_two_groups": dict(
        optim_wrapper=dict(optimizer=dict(type="Adam", lr=0.01, weight_decay=0.0),
                           paramwise_cfg=dict(custom_keys={"b": dict(lr_mult=0.5)})),
        param_scheduler=[dict(type="OneCycleLR", eta_max=[0.1, 0.05, 0.1, 0.05, 0.1], total_steps=9,
                              by_epoch=False)],
        train_cfg=dict(by_epoch=True, max_epochs=3)),
    # ReduceOnPlateau on the Runner's real validation loss. rule="greater" on a loss that
    # mostly falls makes most validations "bad", so the lr is cut several times.
    "plateau_iter_based_val_interval": dict(
        optim_wrapper=SGD,
        param_scheduler=[dict(type="LinearLR", start_factor=0.5, by_epoch=False, end=3),
                         dict(type="ReduceOnPlateauLR", monitor="loss", rule="greater",
                              patience=0, factor=0.5),
                         dict(type="ReduceOnPlateauMomentum", monitor="loss", patience=0,
                              factor=0.9)],
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=9, val_interval=2),
        val_cfg=dict()),
    "plateau_iter_based_val_begin": dict(
        optim_wrapper=SGD,
        # threshold=0.5: a validation is "better" only if the loss halved since the best
        param_scheduler=[dict(type="ReduceOnPlateauLR", monitor="loss", threshold=0.5,
                              patience=0, factor=0.5)],
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=10, val_interval=3, val_begin=4),
        val_cfg=dict()),
    "plateau_epoch_based_every_other_epoch": dict(
        optim_wrapper=SGD,
        param_scheduler=[dict(type="MultiStepLR", milestones=[3], gamma=0.5),
                         dict(type="ReduceOnPlateauLR", monitor="loss", rule="greater",
                              patience=0, factor=0.5)],
        train_cfg=dict(by_epoch=True, max_epochs=5, val_interval=2),
        val_cfg=dict()),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_before_every_iteration_equal_the_stock_runner(name, server, tmp_path):
    cfg = CASES[name]
    stock = run(tmp_path / "stock", cfg, None)
    ours = run(tmp_path / "ours", cfg,
               dict(type="ParamschedHook", server=server.target, job_id=f"mm-{name}"))
    assert len(stock) == len(ours) > 0
    assert ours == stock


@pytest.mark.parametrize("name", sorted(n for n in CASES if n.startswith("plateau_")))
def test_plateau_cuts_follow_the_runners_validation_metrics(name, server, tmp_path):
    """The stock curve does change at validations (so the comparison above is no
    vacuous one), and the hook's curve is the same."""
    cfg = CASES[name]
    ours = run(tmp_path / "ours", cfg,
               dict(type="ParamschedHook", server=server.target, job_id=f"mm-cut-{name}"))
    lrs = [row[0][0] for row in ours]
    assert len(set(lrs)) >= 2 and lrs[-1] < lrs[0]


# --------------------------------------------------------------------------- crash + resume

class Crash(Hook):
    """Kills the run before iteration ``at`` (after Record saw its values)."""

    priority = "LOWEST"

    def __init__(self, at: int) -> None:
        self.at = at

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == self.at:
            raise RuntimeError("crash")


RESUME_CASES = {
    # Checkpoints after every epoch (before its validation), crash inside epoch 3.
    "epoch_based": (CASES["plateau_epoch_based_every_other_epoch"] | dict(
        train_cfg=dict(by_epoch=True, max_epochs=5, val_interval=1)),
        dict(type="CheckpointHook", interval=1), 8),
    # Checkpoints at every validation point (before its validation), crash after one.
    "iter_based": (CASES["plateau_iter_based_val_interval"],
                   dict(type="CheckpointHook", by_epoch=False, interval=2), 5),
}


@pytest.mark.parametrize("name", sorted(RESUME_CASES))
def test_crash_and_resume_into_an_empty_server_equals_the_stock_runners(name, server,
                                                                        tmp_path):
    """The stock Runner crashes and resumes from its checkpoint; so does ours, resumed
    against a server that never saw the job. The owed validation of the checkpoint's
    epoch (or point) counts as not validated in both."""
    cfg, checkpoint, at = RESUME_CASES[name]

    def crash_and_resume(work: Any, hook: Any, resumed_hook: Any) -> list:
        before: list = []
        runners: list = []
        with pytest.raises(RuntimeError, match="crash"):
            run(work, cfg, hook, hooks=(Record(before), Crash(at)), checkpoint=checkpoint,
                runner_out=runners)
        for h in runners[0].hooks:  # the crashed process is gone: so are its handles
            if isinstance(h, ParamschedHook):
                h.after_run(runners[0])
        return before + run(work, cfg, resumed_hook, checkpoint=checkpoint, resume=True)

    stock = crash_and_resume(tmp_path / "stock", None, None)
    job = f"mm-resume-{name}"
    with serving(data_dir=tmp_path / "empty-store") as (empty, _stub):
        ours = crash_and_resume(
            tmp_path / "ours", dict(type="ParamschedHook", server=server.target, job_id=job),
            dict(type="ParamschedHook", server=empty.target, job_id=job))
    assert len(stock) > at + 1  # the crashed run's iterations, then the resumed run's
    assert ours == stock


def test_load_from_without_resume_starts_a_new_schedule(server, tmp_path):
    cfg = CASES["warmup_multistep_by_epoch"]
    hook = dict(type="ParamschedHook", server=server.target, job_id="mm-load-from")
    first = run(tmp_path / "a", cfg, hook, checkpoint=dict(type="CheckpointHook", interval=1))
    again = run(tmp_path / "b", cfg, hook, load_from=str(tmp_path / "a" / "epoch_2.pth"))
    assert again == first  # weights only: the schedule starts over, as stock MMEngine


# --------------------------------------------------------------------------- AMP

@OPTIM_WRAPPERS.register_module(force=True)
class CpuScalerOptimWrapper(OptimWrapper):
    """AmpOptimWrapper's loss scaling on CPU (AmpOptimWrapper asserts an accelerator):
    ``torch.amp.GradScaler("cpu")`` skips the optimizer step of an iteration whose
    gradients overflow, as on a GPU."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loss_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
        self.skipped = 0

    def backward(self, loss, **kwargs):
        self.loss_scaler.scale(loss).backward(**kwargs)
        self._inner_count += 1

    def step(self, **kwargs):
        scale = self.loss_scaler.get_scale()
        self.loss_scaler.step(self.optimizer, **kwargs)
        self.loss_scaler.update()
        self.skipped += self.loss_scaler.get_scale() < scale  # it backs off on a skip


class Poison(Hook):
    """Makes the loss of the given iterations overflow (so the scaler skips them)."""

    priority = "LOWEST"

    def __init__(self, iters: set[int]) -> None:
        self.iters = iters

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        model.poison = runner.iter in self.iters


AMP_CASE = dict(
    optim_wrapper=dict(SGD, type="CpuScalerOptimWrapper"),
    param_scheduler=[dict(type="LinearLR", start_factor=0.2, by_epoch=False, end=5),
                     dict(type="StepLR", step_size=1, gamma=0.5)],
    train_cfg=dict(by_epoch=True, max_epochs=3))


def test_amp_steps_skipped_by_the_grad_scaler_still_count(server, tmp_path):
    runners: list = []
    stock = run(tmp_path / "stock", AMP_CASE, None, hooks=(Poison({1, 4, 5}),))
    ours = run(tmp_path / "ours", AMP_CASE,
               dict(type="ParamschedHook", server=server.target, job_id="mm-amp-cpu"),
               hooks=(Poison({1, 4, 5}),), runner_out=runners)
    assert runners[0].optim_wrapper.skipped == 3  # the steps were really skipped
    assert len(ours) == 9 and ours == stock


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="AmpOptimWrapper asserts an accelerator at construction (CUDA here);"
                           " the CPU GradScaler test above covers skipped steps")
def test_the_real_amp_optim_wrapper_on_a_gpu(server, tmp_path):
    case = dict(AMP_CASE, optim_wrapper=dict(SGD, type="AmpOptimWrapper", loss_scale="dynamic"))
    stock = run(tmp_path / "stock", case, None, hooks=(Poison({1, 4}),))
    ours = run(tmp_path / "ours", case,
               dict(type="ParamschedHook", server=server.target, job_id="mm-amp-gpu"),
               hooks=(Poison({1, 4}),))
    assert len(ours) == 9 and ours == stock


# --------------------------------------------------------------------------- OptimWrapperDict

class TwoOptimizers(TinyModel):
    """A GAN-style model: each part has its own optimizer, stepped in train_step."""

    def train_step(self, data, optim_wrapper):
        data = self.data_preprocessor(data, True)
        for name in ("a", "b"):
            loss = self._run_forward(data, mode="loss")["loss"]
            optim_wrapper[name].update_params(loss)
        return {"loss": loss}


def test_optim_wrapper_dict_is_one_job_per_optimizer(server, tmp_path):
    schedulers = dict(
        a=[dict(type="LinearLR", start_factor=0.5, by_epoch=False, end=4)],
        b=[dict(type="MultiStepLR", milestones=[1], gamma=0.1),
           dict(type="CosineAnnealingMomentum", T_max=2, by_epoch=True, eta_min=0.5)])
    cfg = dict(param_scheduler=schedulers, optim_wrapper=None,
               train_cfg=dict(by_epoch=True, max_epochs=2))

    def train(work: Any, hook: Any) -> list:
        torch.manual_seed(0)
        model = TwoOptimizers()
        wrappers = dict(
            a=OptimWrapper(torch.optim.SGD(model.a.parameters(), lr=0.1, momentum=0.9)),
            b=OptimWrapper(torch.optim.Adam(model.b.parameters(), lr=0.01)))
        return run(work, cfg, hook, model=model, optim_wrapper=wrappers)

    stock = train(tmp_path / "stock", None)
    ours = train(tmp_path / "ours",
                 dict(type="ParamschedHook", server=server.target, job_id="mm-dict"))
    assert len(ours) == 6 and ours == stock
    with Client(server.target) as client:
        jobs = {job.job_id for job in client.list_jobs(prefix="mm-dict")}
    assert jobs == {"mm-dict.a", "mm-dict.b"}


def test_dynamic_val_intervals_with_reduce_on_plateau_are_refused(server, tmp_path):
    cfg = dict(CASES["plateau_iter_based_val_begin"],
               train_cfg=dict(type="IterBasedTrainLoop", max_iters=8, val_interval=3,
                              dynamic_intervals=[(4, 2)]))
    with pytest.raises(ValueError, match="dynamic_intervals with ReduceOnPlateau"):
        run(tmp_path, cfg, dict(type="ParamschedHook", server=server.target,
                                job_id="mm-dynamic"))
