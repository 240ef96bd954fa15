"""``ParamschedCallback``: a Lightning ``Trainer`` trains against paramsched by adding one
callback.

    trainer = Trainer(..., callbacks=[ParamschedCallback(server="host:port", job_id="job-42")])

The torch schedulers that ``configure_optimizers`` returns stay as they are: at
``on_train_start`` the callback reads them from ``trainer.lr_scheduler_configs`` (with
their ``interval`` and ``frequency``), translates each into the engine's ``Torch*``
scheduler types (``paramsched.server.schedules.torch_semantics``: torch's arithmetic,
bit for bit) and creates the job from them, so the server serves the very values the
stock run would have. Lightning no longer steps them: each is replaced by a relay in
that list. A ``ReduceLROnPlateau``'s relay hands the metric of each ``step(metric)`` --
called by Lightning exactly when and with what it would have stepped the scheduler -- to
the job as the validation decision (an iteration-based job with ``val_interval``); the
other relays ignore their steps. ``param_scheduler=[...]`` (MMEngine's config list) may
be given instead, for a module that returns no schedulers.

Iterations are Lightning's optimizer steps (``trainer.global_step``), counted by the
callback (``count="manual"``) after every step where Lightning steps its per-step
schedulers, so steps that AMP's GradScaler skipped count as in Lightning. Every value
lands in the optimizer before the next ``optimizer.step()``. Checkpoints carry the
schedule in the callback's state (``state_dict``); a restored state is kept until the
job is attached, then loaded (also into a server whose store is empty). Every DDP rank
attaches to the one job.
"""

from __future__ import annotations

import inspect
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import GradientAccumulationScheduler
from torch.optim import lr_scheduler as torch_lr

from paramsched.client import Client

STATE_FORMAT = "paramsched.lightning/v1"
#: MMEngine's "no end", the Torch types' default window end.
NO_END = 10**9

_CLIENT_OPTIONS = frozenset(
    name for name, p in inspect.signature(Client.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY)


class ParamschedCallback(pl.Callback):
    """Serves the schedule of the ``Trainer``'s optimizer from the paramsched server.

    ``server``: ``"host:port"``; ``job_id``: the job; ``param_scheduler``: an MMEngine
    config list to serve instead of the module's torch schedulers; ``run_id``: see
    ``Client.attach``; every other keyword is a ``paramsched.Client`` option
    (``token``, ``wait_timeout``, ``plan_size``, ...).
    """

    def __init__(self, server: str, job_id: str, *,
                 param_scheduler: Sequence[Mapping[str, Any]] | None = None,
                 run_id: str | None = None, **client_options: Any) -> None:
        unknown = sorted(set(client_options) - _CLIENT_OPTIONS)
        if unknown:
            raise TypeError(f"ParamschedCallback got unknown option(s) {', '.join(unknown)}; "
                            f"paramsched.Client takes {', '.join(sorted(_CLIENT_OPTIONS))}")
        if not isinstance(job_id, str) or not job_id:
            raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
        self.server = server
        self.job_id = job_id
        self.param_scheduler = None if param_scheduler is None else list(param_scheduler)
        self.run_id = run_id
        self.client_options = client_options
        self._client: Client | None = None
        self._handle: Any = None
        self._restored: dict[str, Any] | None = None  # kept until the job is attached
        self._initial: list[dict[str, Any]] = []
        self._seen_steps = 0
        self._plan: _Translation | None = None
        self._owed = False  # a decision (validation point / epoch end) not given yet
        self._metrics: dict[str, float] = {}
        self._trainer: pl.Trainer | None = None
        self._final_state: dict[str, Any] | None = None  # the state when training ended

    # ------------------------------------------------------------------ attach

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Run before the other callbacks: Lightning steps its schedulers before any
        # callback's on_train_batch_end, so the next step's values must be in place when
        # theirs run (a logger or a monitor reading the lr there sees the stock value).
        callbacks = getattr(trainer, "callbacks", None)
        if isinstance(callbacks, list) and self in callbacks:
            callbacks.remove(self)
            callbacks.insert(0, self)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise ValueError("ParamschedCallback needs automatic optimization: with manual "
                             "optimization the module steps its own schedulers")
        if len(trainer.optimizers) != 1:
            raise ValueError(f"ParamschedCallback serves one optimizer, the trainer has "
                             f"{len(trainer.optimizers)}")
        optimizer = trainer.optimizers[0]
        self._trainer = trainer
        configs = list(trainer.lr_scheduler_configs)
        plan = _translate(trainer, configs, self.param_scheduler)
        fresh = self._restored is None and trainer.global_step == 0
        self._initial = (list(self._restored["initial"]) if self._restored is not None
                         else _initial_groups(optimizer, configs))
        expected = [g["lr"] for g in optimizer.param_groups]
        self._client = Client(self.server, **self.client_options)
        self._handle = self._client.attach(
            optimizer, self.job_id, plan.configs, initial_from=_Groups(self._initial, optimizer),
            run_id=self.run_id, count="manual", **plan.length)
        self._plan = plan
        # Lightning must not step them any more: each becomes a relay. Lightning steps a
        # plateau relay when and with the metric it would have given the real scheduler;
        # the others ignore their steps. The list keeps its shape, so Lightning's
        # checkpoints keep one scheduler state per config (the real ones', as taken over).
        for config in configs:
            config.scheduler = _Relay(  # type: ignore[assignment]
                self, config.scheduler, str(config.monitor) if config.reduce_on_plateau
                else None)
        restored, self._restored, self._final_state = self._restored, None, None
        if restored is not None:
            self._handle.load_state_dict(restored["schedule"])
        elif self._handle.resume_required:
            self._handle.start_over()  # a new run without a checkpoint starts over, as stock
        self._seen_steps = self._handle.iteration
        if self._seen_steps != trainer.global_step:
            raise ValueError(
                f"job {self.job_id!r} resumes at iteration {self._seen_steps} but the trainer "
                f"at global step {trainer.global_step}: resume from the checkpoint that "
                "carries this callback's state")
        # A checkpoint taken at a validation point before its decision: Lightning does not
        # step its plateau scheduler for it after a restart, so neither does the job.
        self._owed = restored is not None and plan.is_point(self._seen_steps)
        self._settle()
        if fresh and configs:
            served = [g["lr"] for g in optimizer.param_groups]
            if served != expected:
                raise RuntimeError(
                    f"paramsched job {self.job_id!r}: the translated schedule starts at lr "
                    f"{served}, the torch schedulers at {expected}; please report this "
                    f"with the schedulers of configure_optimizers ({plan.describe})")

    # ------------------------------------------------------------------ steps

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self._handle is None:
            return
        self._settle()
        self._handle.apply_values()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._handle is None or trainer.global_step == self._seen_steps:
            return  # an accumulation step: Lightning steps no scheduler either
        self._seen_steps = trainer.global_step
        self._handle.step()
        assert self._plan is not None
        self._owed = self._plan.is_point(self._handle.iteration)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._settle()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._settle()
        # trainer.save_checkpoint() after fit still carries the schedule.
        self._final_state = self.state_dict()
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.detach()
            self._handle = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _relay(self, monitor: str, metric: Any) -> None:
        """A plateau relay was stepped: this point's decision has its metric."""
        if not self._owed:
            raise RuntimeError(
                f"paramsched job {self.job_id!r}: Lightning stepped ReduceLROnPlateau after "
                f"iteration {self._seen_steps}, which the translated schedule has no "
                "validation point for; please report this")
        self._metrics[monitor] = float(metric)  # torch's ReduceLROnPlateau does float()
        self._settle()

    def _settle(self) -> None:
        """Give the owed decision: the relayed metrics, or None (nothing stepped here)."""
        if not self._owed or self._handle is None:
            return
        assert self._plan is not None
        self._owed = False
        metrics, self._metrics = self._metrics or None, {}
        if self._plan.epoch_based:  # an MMEngine config: its ReduceOnPlateau reads the
            # metrics of the epoch that ended (settled before the next one's first step)
            assert self._trainer is not None
            self._handle.end_epoch(_scalars(self._trainer.callback_metrics))
        else:
            self._handle.record_validation(metrics)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        if self._handle is None:
            kept = self._restored if self._restored is not None else self._final_state
            return dict(kept) if kept is not None else {}
        return {"format": STATE_FORMAT, "schedule": self._handle.state_dict(),
                "initial": [dict(g) for g in self._initial]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return  # a checkpoint saved before the job was attached
        if state_dict.get("format") != STATE_FORMAT:
            raise ValueError(f"not a ParamschedCallback state (format "
                             f"{state_dict.get('format')!r}, this version reads {STATE_FORMAT})")
        if self._handle is not None:
            self._handle.load_state_dict(state_dict["schedule"])
            self._seen_steps = self._handle.iteration
        else:
            self._restored = dict(state_dict)


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float] | None:
    out = {}
    for key, value in metrics.items():
        tensor = isinstance(value, torch.Tensor) and value.numel() == 1
        if tensor or (isinstance(value, int | float) and not isinstance(value, bool)):
            out[key] = float(value)
    return out or None


class _Relay:
    """Stands in for a taken-over scheduler in ``trainer.lr_scheduler_configs``. For a
    ``ReduceLROnPlateau`` (``monitor`` given) Lightning calls ``step(metric)`` where it would
    step the real one, and the metric goes to the job; other steps do nothing."""

    def __init__(self, callback: ParamschedCallback, scheduler: Any,
                 monitor: str | None) -> None:
        self._callback = callback
        self.scheduler = scheduler
        self.optimizer = scheduler.optimizer
        self.monitor = monitor

    def step(self, metrics: Any = None, epoch: Any = None) -> None:
        if self.monitor is not None:
            self._callback._relay(self.monitor, metrics)

    def get_last_lr(self) -> list[Any]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        # The real scheduler's state (never stepped since the takeover): a checkpoint stays
        # loadable into the schedulers configure_optimizers builds on resume.
        return dict(self.scheduler.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state_dict)


class _Groups:
    """The optimizer as it was before its torch schedulers were built."""

    def __init__(self, groups: list[dict[str, Any]], optimizer: torch.optim.Optimizer) -> None:
        self.param_groups = groups
        self.defaults = optimizer.defaults


def _initial_groups(optimizer: torch.optim.Optimizer, configs: list[Any]) -> list[dict[str, Any]]:
    """Each group's values before the schedulers' constructors changed them: ``lr`` is
    torch's ``initial_lr``; OneCycle's cycled momentum starts at ``max_momentum``."""
    cycles = any(_one_cycle_momentum(c.scheduler) for c in configs)
    out = []
    for group in optimizer.param_groups:
        values: dict[str, Any] = {}
        for key, value in group.items():
            if key == "params":
                continue
            if key == "betas":
                values[key] = [float(b) for b in value]
            elif isinstance(value, bool) or not isinstance(value, int | float):
                continue
            else:
                values[key] = value
        if configs and "initial_lr" in group:
            values["lr"] = group["initial_lr"]
        if cycles:
            if "betas" in values:
                values["betas"] = [group["max_momentum"], values["betas"][1]]
            else:
                values["momentum"] = group["max_momentum"]
        out.append(values)
    return out


def _one_cycle_momentum(scheduler: Any) -> bool:
    inner = getattr(scheduler, "_schedulers", [scheduler])
    return any(isinstance(s, torch_lr.OneCycleLR) and s.cycle_momentum for s in inner)


# ---------------------------------------------------------------------- translation

class _Translation:
    """The job a trainer's schedulers become: configs, length, validation points."""

    def __init__(self, configs: Sequence[Mapping[str, Any]], length: dict[str, int],
                 val_interval: int | None, epoch_based: bool, describe: str) -> None:
        self.configs = configs
        self.length = length
        self.val_interval = val_interval
        self.epoch_based = epoch_based
        self.describe = describe
        if val_interval is not None:
            length["val_interval"] = val_interval

    def is_point(self, done: int) -> bool:
        """Whether a decision is due after ``done`` iterations."""
        if done <= 0:
            return False
        if self.epoch_based:
            epoch_length = self.length["epoch_length"]
            return done % epoch_length == 0 and done <= epoch_length * self.length["max_epochs"]
        if self.val_interval is None:
            return False
        return done % self.val_interval == 0 or done == self.length["max_iters"]


def _steps_per_epoch(trainer: pl.Trainer) -> tuple[int, list[int]]:
    """Optimizer steps per epoch, and the batch index of each (Lightning steps on every
    ``accumulate_grad_batches``-th batch and on an epoch's last one)."""
    batches = trainer.num_training_batches
    if not isinstance(batches, int) or batches < 1 or math.isinf(batches):
        raise ValueError(f"ParamschedCallback needs a train dataloader with a length (the "
                         f"trainer has {batches} batches per epoch)")
    accumulate = trainer.accumulate_grad_batches
    if any(isinstance(c, GradientAccumulationScheduler)
           for c in getattr(trainer, "callbacks", ())):
        raise ValueError("ParamschedCallback cannot count the steps of a "
                         "GradientAccumulationScheduler (accumulation that changes by epoch)")
    if trainer.strategy.handles_gradient_accumulation:
        raise ValueError("ParamschedCallback cannot count steps of a strategy that handles "
                         "gradient accumulation itself (DeepSpeed)")
    at = [min((j + 1) * accumulate, batches) - 1 for j in range(-(-batches // accumulate))]
    return len(at), at


def _translate(trainer: pl.Trainer, configs: list[Any],
               param_scheduler: list[Mapping[str, Any]] | None) -> _Translation:
    epoch_length, batch_of_step = _steps_per_epoch(trainer)
    max_steps = trainer.max_steps if trainer.max_steps not in (None, -1) else None
    max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
    if max_steps is None and max_epochs is None:
        raise ValueError("ParamschedCallback needs a finite training length: Trainer("
                         "max_steps=...) or max_epochs=...")
    total = min(x for x in (max_steps, None if max_epochs is None else max_epochs * epoch_length)
                if x is not None)
    if param_scheduler is not None:
        if configs:
            raise ValueError("ParamschedCallback got param_scheduler= and configure_optimizers "
                             "returns schedulers too; give one of them")
        if max_steps is None:
            assert max_epochs is not None
            return _Translation(list(param_scheduler), {"epoch_length": epoch_length,
                                                        "max_epochs": max_epochs},
                                None, True, "param_scheduler")
        return _Translation(list(param_scheduler), {"max_iters": total}, None, False,
                            "param_scheduler")
    if not configs:
        raise ValueError("ParamschedCallback has no schedule to serve: configure_optimizers "
                         "returns no lr scheduler and no param_scheduler= was given")
    out: list[dict[str, Any]] = []
    points: list[int] = []
    plateaus = [c for c in configs if c.reduce_on_plateau]
    if len(plateaus) > 1:
        raise ValueError("ParamschedCallback serves at most one ReduceLROnPlateau")
    # At an epoch's last step Lightning steps the per-step schedulers, then the per-epoch
    # ones: the engine steps them in list order after the same iteration.
    for config in configs:
        if config.interval not in ("step", "epoch"):
            raise ValueError(f"lr scheduler interval must be 'step' or 'epoch', got "
                             f"{config.interval!r}")
    ordered = ([c for c in configs if c.interval == "step"]
               + [c for c in configs if c.interval == "epoch"])
    for config in ordered:
        frequency = int(config.frequency)
        if config.interval == "step":
            # Lightning steps when (batch_idx + 1) % frequency == 0 at an optimizer step.
            hits = [(j + 1) % epoch_length for j, b in enumerate(batch_of_step)
                    if (b + 1) % frequency == 0]
            period, at = epoch_length, sorted(set(hits))
            if set(hits) == set(range(epoch_length)) or (epoch_length == 1 and hits):
                period, at = 1, [0]
        else:
            period, at = epoch_length * frequency, [0]
        if config.reduce_on_plateau:
            points.extend(p or period for p in at)
            points.append(period)
            out.append(_plateau(config))
        else:
            if not at:  # never stepped in training (its constructor's step still counts)
                period, at = total + 1, [0]
            out.extend(_scheduler(config.scheduler, period, at))
    val_interval = None
    if points:
        val_interval = math.gcd(*points)
    return _Translation(out, {"max_iters": total}, val_interval, False,
                        ", ".join(type(c.scheduler).__name__ for c in configs))


def _plateau(config: Any) -> dict[str, Any]:
    s = config.scheduler
    if type(s) is not torch_lr.ReduceLROnPlateau:
        raise ValueError(f"ParamschedCallback cannot serve {type(s).__name__} (a subclass of "
                         "ReduceLROnPlateau: its rules may differ)")
    return {"type": "TorchReduceOnPlateauLR", "monitor": config.monitor, "mode": s.mode,
            "factor": s.factor, "patience": s.patience, "threshold": s.threshold,
            "threshold_mode": s.threshold_mode, "cooldown": s.cooldown,
            "min_lr": list(s.min_lrs), "eps": s.eps}


SUPPORTED = (torch_lr.LinearLR, torch_lr.ConstantLR, torch_lr.StepLR, torch_lr.MultiStepLR,
             torch_lr.ExponentialLR, torch_lr.CosineAnnealingLR, torch_lr.PolynomialLR,
             torch_lr.OneCycleLR, torch_lr.SequentialLR, torch_lr.ChainedScheduler)


def _torch_step(n: int, period: int, at: list[int]) -> int:
    """The global step of torch's ``n``-th step (n >= 1) under the pattern."""
    positions = sorted(p or period for p in at)
    cycle, index = divmod(n - 1, len(positions))
    return cycle * period + positions[index]


def _scheduler(s: Any, period: int, at: list[int]) -> list[dict[str, Any]]:
    """The engine configs of one torch scheduler stepped at ``(period, at)``."""
    if type(s) not in SUPPORTED:
        raise ValueError(
            f"ParamschedCallback cannot serve the lr scheduler {type(s).__name__}; it serves "
            f"{', '.join(t.__name__ for t in SUPPORTED)} and ReduceLROnPlateau")
    stepping = {"by_epoch": False, "step_period": period, "step_at": list(at)}
    if isinstance(s, torch_lr.ChainedScheduler):  # each child steps, in order, every time
        return [cfg for child in s._schedulers for cfg in _scheduler(child, period, at)]
    if isinstance(s, torch_lr.SequentialLR):
        milestones = list(s._milestones)
        if any(b <= a for a, b in zip([0, *milestones], milestones, strict=False)):
            raise ValueError(f"SequentialLR milestones must be increasing and above 0, got "
                             f"{milestones}")
        edges = [0, *(_torch_step(m, period, at) for m in milestones), NO_END]
        out = []
        for i, child in enumerate(s._schedulers):
            nested = isinstance(child, torch_lr.SequentialLR | torch_lr.OneCycleLR
                                | torch_lr.ChainedScheduler)
            if type(child) not in SUPPORTED or nested:
                raise ValueError(f"ParamschedCallback cannot serve {type(child).__name__} "
                                 "inside SequentialLR")
            (cfg,) = _scheduler(child, period, at)
            cfg.update(begin=edges[i], end=edges[i + 1], closed_form_start=i > 0)
            out.append(cfg)
        return out
    fields: dict[str, Any]
    if isinstance(s, torch_lr.LinearLR):
        fields = {"start_factor": s.start_factor, "end_factor": s.end_factor,
                  "total_iters": s.total_iters}
    elif isinstance(s, torch_lr.ConstantLR):
        fields = {"factor": s.factor, "total_iters": s.total_iters}
    elif isinstance(s, torch_lr.StepLR):
        fields = {"step_size": s.step_size, "gamma": s.gamma}
    elif isinstance(s, torch_lr.MultiStepLR):
        fields = {"milestones": sorted(Counter(s.milestones).elements()), "gamma": s.gamma}
    elif isinstance(s, torch_lr.ExponentialLR):
        fields = {"gamma": s.gamma}
    elif isinstance(s, torch_lr.CosineAnnealingLR):
        fields = {"T_max": s.T_max, "eta_min": s.eta_min}
    elif isinstance(s, torch_lr.PolynomialLR):
        fields = {"total_iters": s.total_iters, "power": s.power}
    else:
        return _one_cycle(s, stepping)
    name = type(s).__name__.removesuffix("LR")
    return [{"type": f"Torch{name}LR", **fields, **stepping}]


def _one_cycle(s: torch_lr.OneCycleLR, stepping: dict[str, Any]) -> list[dict[str, Any]]:
    groups = s.optimizer.param_groups
    ends = [p["end_step"] for p in s._schedule_phases]
    fields: dict[str, Any] = {
        "total_steps": s.total_steps, "anneal_strategy": s._anneal_func_type,
        "three_phase": len(ends) == 3, "phase_end_steps": ends,
        "max_lr": [g["max_lr"] for g in groups], "initial_lr": [g["initial_lr"] for g in groups],
        "min_lr": [g["min_lr"] for g in groups], **stepping}
    out = [{"type": "TorchOneCycleLR", **fields}]
    if s.cycle_momentum:
        out.append({"type": "TorchOneCycleMomentum", **fields,
                    "max_momentum": [g["max_momentum"] for g in groups],
                    "base_momentum": [g["base_momentum"] for g in groups]})
    return out
