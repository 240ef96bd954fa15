"""``ParamschedCallback``: the Hugging Face ``Trainer`` trains against paramsched by adding
one callback.

    trainer = Trainer(model, args, ..., callbacks=[
        ParamschedCallback(server="host:port", job_id="job-42")])

The schedule is the one the ``TrainingArguments`` describe (``lr_scheduler_type``,
``warmup_steps``, ``lr_scheduler_kwargs``, ``max_steps`` or ``num_train_epochs`` with
``gradient_accumulation_steps``), as the closed-form ``HF<Name>LR`` types of the engine
(``hf_param_scheduler``): the lr of every param group at every optimizer step is the
stock scheduler's, bit for bit. ``param_scheduler=[...]`` (an MMEngine list) replaces it.

How it plugs in, each rule in one place:

* ``on_train_begin`` (the optimizer, the Trainer's scheduler and a resumed checkpoint are
  loaded by then): the job is created from the optimizer's ``initial_lr`` values (the
  Trainer's scheduler already wrote its step-0 lr), ``max_iters = state.max_steps``, one
  iteration per optimizer step (``count="manual"``). The Trainer's scheduler is
  neutralised in place (its class becomes a subclass): its ``step`` does nothing and its
  ``get_last_lr()`` (which the Trainer logs) reads the optimizer's current lrs, i.e. the
  served ones.
* ``on_step_end``: ``handle.step()``, unless the optimizer step was skipped (AMP), as the
  Trainer skips its scheduler step then.
* ReduceOnPlateau (``reduce_lr_on_plateau``, or one in ``param_scheduler``): the job has
  ``val_interval = eval_steps`` (``eval_strategy="steps"``) or the optimizer steps per
  epoch (``"epoch"``); ``on_evaluate`` reports ``eval_<metric_for_best_model>`` at those
  points, a point the Trainer did not evaluate (``eval_delay``) is reported as not
  validated.
* Checkpoints: the schedule state (``handle.state_dict()``) travels in the checkpoint's
  ``trainer_state.json`` (``stateful_callbacks["ParamschedCallback"]``); a run resumed
  with ``resume_from_checkpoint`` loads it back (also into an empty server), whether or
  not ``restore_callback_states_from_checkpoint`` is set.
* DDP: every rank attaches to the one job; the run id is agreed as ``Client.attach`` does
  (through ``torch.distributed``, which Accelerate has initialised).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import IntervalStrategy, SchedulerType

from paramsched.client import Client

__all__ = ["ParamschedCallback", "hf_param_scheduler"]

#: The key of this callback's entry in ``TrainerState.stateful_callbacks``.
STATE_KEY = "ParamschedCallback"

#: ``lr_scheduler_type`` -> (engine type, the ``lr_scheduler_kwargs`` it takes). ``constant``
#: and ``constant_with_warmup`` ignore the kwargs, as ``get_scheduler`` does.
_TYPES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "constant": ("HFConstantLR", None),
    "constant_with_warmup": ("HFConstantWithWarmupLR", None),
    "linear": ("HFLinearLR", ()),
    "cosine": ("HFCosineLR", ("num_cycles",)),
    "cosine_with_restarts": ("HFCosineWithRestartsLR", ("num_cycles",)),
    "polynomial": ("HFPolynomialLR", ("lr_end", "power")),
    "inverse_sqrt": ("HFInverseSqrtLR", ("timescale",)),
    "cosine_with_min_lr": ("HFCosineWithMinLRLR", ("num_cycles", "min_lr", "min_lr_rate")),
    "cosine_warmup_with_min_lr": ("HFCosineWarmupWithMinLRLR",
                                  ("num_cycles", "min_lr", "min_lr_rate", "warmup_lr_rate")),
    "warmup_stable_decay": ("HFWarmupStableDecayLR", (
        "num_decay_steps", "num_stable_steps", "warmup_type", "decay_type", "min_lr_ratio",
        "num_cycles")),
}

#: torch ``ReduceLROnPlateau`` keywords -> MMEngine ``ReduceOnPlateauLR`` fields.
_PLATEAU_KWARGS = {"mode": "rule", "factor": "factor", "patience": "patience",
                   "threshold": "threshold", "threshold_mode": "threshold_rule",
                   "cooldown": "cooldown", "min_lr": "min_value", "eps": "eps"}


def hf_param_scheduler(
    lr_scheduler_type: str,
    *,
    num_warmup_steps: int,
    num_training_steps: int,
    lr_scheduler_kwargs: Mapping[str, Any] | None = None,
    default_lr: float,
    monitor: str = "eval_loss",
) -> list[dict[str, Any]]:
    """The engine config that serves what ``transformers.get_scheduler(lr_scheduler_type,
    optimizer, num_warmup_steps, num_training_steps, lr_scheduler_kwargs)`` computes.

    ``default_lr``: ``optimizer.defaults["lr"]`` (HF's ``lr_init`` of ``polynomial``, and
    the divisor of ``min_lr``). One scheduler per optimizer step (``by_epoch=False``) whose
    window holds step ``num_training_steps`` too: the lr the Trainer logs after its last
    step. ``monitor``: the metric ``reduce_lr_on_plateau`` decides on. Bad input raises
    ``ValueError`` naming the argument.
    """
    name = SchedulerType(lr_scheduler_type).value
    if isinstance(lr_scheduler_kwargs, str):  # TrainingArguments accept a JSON string
        lr_scheduler_kwargs = json.loads(lr_scheduler_kwargs)
    kwargs = dict(lr_scheduler_kwargs or {})
    window = {"by_epoch": False, "begin": 0, "end": num_training_steps + 1}
    if name == "reduce_lr_on_plateau":
        cfg: dict[str, Any] = {"type": "ReduceOnPlateauLR", "monitor": monitor}
        for key, value in kwargs.items():
            if key not in _PLATEAU_KWARGS:
                raise ValueError(f"lr_scheduler_kwargs.{key}: torch's ReduceLROnPlateau takes "
                                 f"no {key!r} (it takes {', '.join(_PLATEAU_KWARGS)})")
            if key == "mode":
                if value not in ("min", "max"):
                    raise ValueError(f"lr_scheduler_kwargs.mode: must be 'min' or 'max', "
                                     f"got {value!r}")
                value = "less" if value == "min" else "greater"
            cfg[_PLATEAU_KWARGS[key]] = list(value) if isinstance(value, Sequence) and not \
                isinstance(value, str) else value
        return [cfg]
    if name not in _TYPES:
        raise ValueError(f"lr_scheduler_type: {name!r} has no paramsched equivalent (served: "
                         f"{', '.join([*_TYPES, 'reduce_lr_on_plateau'])}); pass "
                         "param_scheduler=[...] to ParamschedCallback instead")
    type_name, accepted = _TYPES[name]
    cfg = {"type": type_name, **window}
    if accepted is None:
        if name == "constant_with_warmup":
            cfg["num_warmup_steps"] = num_warmup_steps
        return [cfg]
    for key in kwargs:
        if key not in accepted:
            raise ValueError(f"lr_scheduler_kwargs.{key}: the {name!r} schedule takes no "
                             f"{key!r} (it takes {', '.join(accepted) or 'none'})")
    cfg["num_warmup_steps"] = num_warmup_steps
    if name != "inverse_sqrt":
        cfg["num_training_steps"] = num_training_steps
    if name == "polynomial":
        cfg["lr_init"] = default_lr
    if "min_lr" in accepted:
        min_lr, rate = kwargs.pop("min_lr", None), kwargs.pop("min_lr_rate", None)
        if min_lr is not None and rate is not None:
            raise ValueError("lr_scheduler_kwargs.min_lr: give min_lr or min_lr_rate, not both")
        if min_lr is None and rate is None:
            raise ValueError(f"lr_scheduler_kwargs.min_lr_rate: the {name!r} schedule needs "
                             "min_lr or min_lr_rate")
        # HF's own conversion, the same division: min_lr / optimizer.defaults["lr"].
        kwargs["min_lr_rate"] = rate if min_lr is None else min_lr / default_lr
    cfg.update(kwargs)
    return [cfg]


def _has_plateau(config: Any) -> bool:
    items = [config] if isinstance(config, Mapping) else list(config)
    return any(isinstance(c, Mapping) and "ReduceOnPlateau" in str(c.get("type", ""))
               for c in items)


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer under Accelerate's ``AcceleratedOptimizer``."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


class _Initial:
    """Param groups as they were before the Trainer's scheduler wrote its step-0 lr
    (``LRScheduler`` keeps it as ``initial_lr``), or as a checkpoint recorded them
    (``lrs``: a resumed ReduceLROnPlateau run's optimizer holds its reduced lrs)."""

    def __init__(self, optimizer: torch.optim.Optimizer,
                 lrs: Sequence[float] | None = None) -> None:
        self.defaults = optimizer.defaults
        self.param_groups = []
        for index, group in enumerate(optimizer.param_groups):
            copy = {k: v for k, v in group.items() if k != "initial_lr"}
            if lrs is not None and index < len(lrs):
                copy["lr"] = lrs[index]
            elif "initial_lr" in group:
                copy["lr"] = group["initial_lr"]
            self.param_groups.append(copy)


class _Served:
    """Mixed into the Trainer's scheduler: ``step`` does nothing and ``get_last_lr()``
    reads the optimizer's lrs (the served ones)."""

    optimizer: Any

    def step(self, *args: Any, **kwargs: Any) -> None:
        return None

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]


_SERVED: dict[type, type] = {}


def _neutralise(scheduler: Any) -> None:
    """Make the Trainer's own scheduler step nothing and report the served lrs.

    The Trainer calls ``scheduler.step()`` after every optimizer step (``step(metric)``
    after an evaluation for ReduceLROnPlateau) and logs ``get_last_lr()[0]``. The callback
    cannot replace ``trainer.lr_scheduler``, so the instance changes class to a subclass
    of its own (``isinstance`` checks of the Trainer still hold) with those two methods;
    its ``__dict__`` is untouched, so ``state_dict()`` still goes into ``scheduler.pt``
    and loads back as the Trainer expects."""
    if scheduler is None or isinstance(scheduler, _Served):
        return
    cls = type(scheduler)
    if cls not in _SERVED:
        _SERVED[cls] = type(f"Served{cls.__name__}", (_Served, cls), {})
    scheduler.__class__ = _SERVED[cls]


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    """The client options that ``trainer_state.json`` can hold (paths as strings);
    credentials objects and PEM bytes stay out of the checkpoint."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, Path):
            value = str(value)
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[key] = value
    return out


_CLIENT_OPTIONS = frozenset(
    name for name, p in inspect.signature(Client.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY)


class ParamschedCallback(TrainerCallback, ExportableState):
    """Serves the Trainer's lr schedule from the paramsched server.

    ``server``: ``"host:port"``; ``job_id``: the job; ``param_scheduler``: an MMEngine
    config list to serve instead of the ``TrainingArguments``' schedule; ``run_id``: see
    ``Client.attach``; every other keyword is a ``Client`` option (``token``, ``tls``,
    ``wait_timeout``, ...).
    """

    def __init__(self, server: str, job_id: str,
                 param_scheduler: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
                 run_id: str | None = None, **client_options: Any) -> None:
        if not isinstance(server, str) or not server:
            raise ValueError(f"server must be 'host:port', got {server!r}")
        if not isinstance(job_id, str) or not job_id:
            raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
        unknown = sorted(set(client_options) - _CLIENT_OPTIONS)
        if unknown:
            raise TypeError(f"ParamschedCallback got unknown option(s) {', '.join(unknown)}; "
                            f"Client takes {', '.join(sorted(_CLIENT_OPTIONS))}")
        self.server = server
        self.job_id = job_id
        self.param_scheduler = param_scheduler
        self.run_id = run_id
        self.client_options = client_options
        self._client: Client | None = None
        self._handle: Any = None
        self._val_interval: int | None = None
        self._owed = False  # a validation point passed whose decision is not reported yet
        self._initial_lrs: list[float] | None = None

    @property
    def handle(self) -> Any:
        """The ``ScheduleHandle`` while training runs (None before and after)."""
        return self._handle

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        """What ``trainer_state.json`` keeps: the arguments (to rebuild the callback, with
        ``restore_callback_states_from_checkpoint``) and the schedule state."""
        schedule = initial_lrs = None
        if self._handle is not None:
            # At a validation point whose evaluation has not come yet (an epoch-end
            # evaluation follows the step's save) the decision is pending in the state.
            schedule = self._handle.state_dict()
            initial_lrs = self._initial_lrs
        args: dict[str, Any] = {"server": self.server, "job_id": self.job_id,
                                "run_id": self.run_id, **_jsonable(self.client_options)}
        if self.param_scheduler is not None:
            args["param_scheduler"] = self.param_scheduler
        return {"args": args, "attributes": {"schedule": schedule, "initial_lrs": initial_lrs}}

    def _saved(self, state: Any) -> Mapping[str, Any] | None:
        """This job's ``attributes`` in a resumed checkpoint's ``trainer_state.json``."""
        entries = (state.stateful_callbacks or {}).get(STATE_KEY)
        if entries is None:
            return None
        for entry in entries if isinstance(entries, list) else [entries]:
            args = entry.get("args", {}) if isinstance(entry, Mapping) else {}
            attributes = entry.get("attributes", {}) if isinstance(entry, Mapping) else {}
            if args.get("job_id") == self.job_id and attributes.get("schedule") is not None:
                return attributes
        return None

    # ------------------------------------------------------------------ attach

    def _config(self, args: Any, max_steps: int, optimizer: torch.optim.Optimizer) -> Any:
        if self.param_scheduler is not None:
            return self.param_scheduler
        metric = args.metric_for_best_model or "loss"
        return hf_param_scheduler(
            args.lr_scheduler_type,
            num_warmup_steps=args.get_warmup_steps(max_steps),
            num_training_steps=max_steps,
            lr_scheduler_kwargs=args.lr_scheduler_kwargs,
            default_lr=optimizer.defaults["lr"],
            monitor=metric if metric.startswith("eval_") else f"eval_{metric}",
        )

    def _validation_interval(self, args: Any, state: Any, train_dataloader: Any) -> int:
        strategy = IntervalStrategy(args.eval_strategy)
        if strategy == IntervalStrategy.STEPS:
            return int(state.eval_steps)
        if strategy == IntervalStrategy.EPOCH and train_dataloader is not None:
            # The Trainer's optimizer steps per epoch (set_initial_training_values).
            batches = len(train_dataloader)
            accumulation = args.gradient_accumulation_steps
            return max(batches // accumulation + int(batches % accumulation > 0), 1)
        raise ValueError("a ReduceOnPlateau schedule needs evaluations: set eval_strategy "
                         "to 'steps' (eval_steps) or 'epoch' in the TrainingArguments")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        optimizer = _torch_optimizer(kwargs["optimizer"])
        max_steps = int(state.max_steps)
        config = self._config(args, max_steps, optimizer)
        attach_kwargs: dict[str, Any] = {}
        if _has_plateau(config):
            self._val_interval = self._validation_interval(
                args, state, kwargs.get("train_dataloader"))
            attach_kwargs["val_interval"] = self._val_interval
        saved = self._saved(state) if state.global_step > 0 else None
        if state.global_step > 0 and saved is None:
            raise ValueError(
                f"resuming at step {state.global_step} from a checkpoint without the schedule "
                f"state of paramsched job {self.job_id!r} (its trainer_state.json has no "
                f"stateful_callbacks[{STATE_KEY!r}] for this job): resume from a checkpoint "
                "saved with ParamschedCallback, or train from the start")
        initial = _Initial(optimizer, saved.get("initial_lrs") if saved else None)
        self._initial_lrs = [group["lr"] for group in initial.param_groups]
        self._client = Client(self.server, **self.client_options)
        try:
            handle = self._client.attach(
                optimizer, self.job_id, config, max_iters=max_steps, run_id=self.run_id,
                count="manual", initial_from=initial, **attach_kwargs)
        except BaseException:
            self._client.close()
            self._client = None
            raise
        self._handle = handle
        _neutralise(kwargs.get("lr_scheduler"))
        if saved is not None:
            handle.load_state_dict(saved["schedule"])
            if self._is_point(handle.iteration):
                # A decision still pending in the checkpoint (its evaluation came after the
                # save, as an epoch-end one does) is made without metrics: the resumed stock
                # Trainer does not evaluate that step again either.
                self._record(None)
        elif handle.resume_required:
            handle.start_over()  # a new run that does not resume: a new schedule, as stock
        handle.apply_values()

    # ------------------------------------------------------------------ steps

    def _is_point(self, iteration: int) -> bool:
        k, last = self._val_interval, self._handle.max_iters
        return k is not None and 0 < iteration <= last and (
            iteration % k == 0 or iteration == last)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._settle()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._handle is None:
            return
        if getattr(kwargs.get("optimizer"), "step_was_skipped", False):
            return  # AMP skipped it: the Trainer's scheduler does not step either
        self._handle.step()
        if self._is_point(self._handle.iteration):
            self._owed = True

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._owed:
            self._record(kwargs.get("metrics"))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._handle is None:
            return
        self._settle()
        self._handle.detach()
        self._handle = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _settle(self) -> None:
        if self._owed:
            self._record(None)  # no evaluation at this validation point

    def _record(self, metrics: Mapping[str, Any] | None) -> None:
        self._owed = False
        if self._handle is None:
            return
        values = None if metrics is None else {
            k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}
        self._handle.record_validation(values)
