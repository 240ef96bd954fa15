"""ParamschedHook against the stock ParamSchedulerHook, with the real MMEngine Runner
on CPU: the lr / momentum / weight_decay of every group (the OptimWrapper's base group
included) before every training iteration are equal, bit for bit."""

from __future__ import annotations

import copy
import os

import pytest

pytest.importorskip("cv2", reason="MMEngine's Runner imports cv2 (opencv-python-headless)")
torch = pytest.importorskip("torch")
pytest.importorskip("mmengine")

from mmengine.hooks import Hook  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import paramsched.integrations.mmengine  # noqa: E402,F401  (registers the hook)

from grpc_harness import serving  # noqa: E402

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
KEYS = ("lr", "momentum", "weight_decay")


class TinyModel(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(2, 2)
        self.b = torch.nn.Linear(2, 1)

    def forward(self, x, y=None, mode="tensor"):
        out = self.b(self.a(x))
        if mode == "loss":
            return {"loss": ((out - y) ** 2).mean()}
        return out


class TinyData(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(2, generator=g), "y": torch.randn(1, generator=g)}


class Record(Hook):
    priority = "VERY_LOW"

    def __init__(self, out: list) -> None:
        self.out = out

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        groups = runner.optim_wrapper.param_groups
        self.out.append([tuple(g.get(k) for k in KEYS) for g in groups])


@pytest.fixture(scope="module")
def server():
    with serving() as (srv, _stub):
        yield srv


def run(tmp_path, cfg: dict, hook: dict | None) -> list:
    cfg = copy.deepcopy(cfg)
    out: list = []
    default_hooks = dict(logger=dict(type="LoggerHook", interval=100),
                         checkpoint=dict(type="CheckpointHook", interval=1000))
    if hook is not None:
        default_hooks["param_scheduler"] = hook
    runner = Runner(
        model=TinyModel(), work_dir=str(tmp_path),
        train_dataloader=dict(dataset=TinyData(), batch_size=2, shuffle=False,
                              sampler=dict(type="DefaultSampler", shuffle=False),
                              collate_fn=dict(type="default_collate")),
        optim_wrapper=cfg["optim_wrapper"], param_scheduler=cfg["param_scheduler"],
        train_cfg=cfg["train_cfg"], default_hooks=default_hooks,
        custom_hooks=[Record(out)], cfg=copy.deepcopy(cfg))
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
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_before_every_iteration_equal_the_stock_runner(name, server, tmp_path):
    cfg = CASES[name]
    stock = run(tmp_path / "stock", cfg, None)
    ours = run(tmp_path / "ours", cfg,
               dict(type="ParamschedHook", server=server.target, job_id=f"mm-{name}"))
    assert len(stock) == len(ours) > 0
    assert ours == stock
