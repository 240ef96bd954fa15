"""``ParamschedHook``: MMEngine's Runner trains against paramsched by changing one hook.

    custom_imports = dict(imports=["paramsched.integrations.mmengine"])
    default_hooks = dict(param_scheduler=dict(
        type="ParamschedHook", server="host:port", job_id="job-42"))

``param_scheduler=[...]`` and ``train_cfg`` stay as they are. The job is created from
that config, the optimizer's initial values (read from the Runner's built schedulers'
``base_values``, i.e. before their construction changed the optimizer), ``train_cfg``
and ``len(train_dataloader)``. The Runner's own schedulers are dropped
(``runner.param_schedulers = None``) so they never step. The handle counts training
iterations (``count="manual"``) where the stock ParamSchedulerHook steps, so gradient
accumulation and AMP steps skipped by the GradScaler count as in MMEngine; the
OptimWrapper's hidden base group (two or more groups) is scheduled as MMEngine does.
Checkpoints carry ``checkpoint["paramsched"]``; ``resume=True`` restores it.
ReduceOnPlateau gets the Runner's validation metrics (``after_val_epoch``): at epoch
ends, or in an ``IterBasedTrainLoop`` at its validation points (the job's
``val_interval``: every ``train_cfg.val_interval`` iterations and after the last one).
"""

from __future__ import annotations

from typing import Any

from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop

from paramsched.client import Client

CHECKPOINT_KEY = "paramsched"


class _WrapperGroups:
    """The optimizer a handle drives: ``optim_wrapper.param_groups`` (the base group
    included), looked up on every write; hooks go to the real optimizer."""

    def __init__(self, wrapper: Any) -> None:
        self._wrapper = wrapper

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self._wrapper.param_groups

    @property
    def defaults(self) -> dict[str, Any]:
        return self._wrapper.optimizer.defaults

    def register_step_pre_hook(self, hook: Any) -> Any:
        return self._wrapper.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: hook(self, args, kwargs))

    def register_step_post_hook(self, hook: Any) -> Any:
        return self._wrapper.optimizer.register_step_post_hook(
            lambda opt, args, kwargs: hook(self, args, kwargs))


class _Initial:
    """Param groups as they were before MMEngine built its schedulers."""

    def __init__(self, groups: list[dict[str, Any]], defaults: dict[str, Any]) -> None:
        self.param_groups = groups
        self.defaults = defaults


def _initial_groups(wrapper: Any, schedulers: list[Any]) -> _Initial:
    groups = [dict(g) for g in wrapper.param_groups]
    betas = "momentum" not in wrapper.optimizer.defaults
    seen: set[str] = set()
    for scheduler in schedulers:
        name = scheduler.param_name
        for g in groups:
            g.pop(f"initial_{name}", None)
            if type(scheduler).__name__.startswith("OneCycle"):
                g.pop(f"max_{name}", None)
                g.pop(f"min_{name}", None)
        if name in seen or not hasattr(scheduler, "base_values"):
            continue  # ReduceOnPlateau keeps none: building it changes no value
        seen.add(name)
        for g, value in zip(groups, scheduler.base_values, strict=True):
            if name == "momentum" and betas and "betas" in g:
                g.pop("momentum", None)
                g["betas"] = (value, g["betas"][1])
            else:
                g[name] = value
    return _Initial(groups, wrapper.optimizer.defaults)


@HOOKS.register_module()
class ParamschedHook(Hook):
    """Replaces ``ParamSchedulerHook``: the schedule comes from the paramsched server.

    ``server``: ``"host:port"``; ``job_id``: the job (``f"{job_id}.{name}"`` per
    optimizer of an ``OptimWrapperDict``); ``run_id``: see ``Client.attach``; every
    other keyword goes to ``Client``.
    """

    priority = "LOW"

    def __init__(self, server: str, job_id: str, run_id: str | None = None,
                 **client_options: Any) -> None:
        self.server = server
        self.job_id = job_id
        self.run_id = run_id
        self.client_options = client_options
        self._client: Client | None = None
        self._handles: dict[str, Any] = {}
        # An epoch ended, or a validation point passed, whose decision is not given yet.
        self._owed = False
        self._epoch_based = True
        self._val_interval: int | None = None  # IterBasedTrainLoop with a val loop

    # ------------------------------------------------------------------ attach

    def before_run(self, runner: Any) -> None:
        built = runner.param_schedulers
        if built is None:
            return
        config = runner.cfg.get("param_scheduler")
        if config is None:
            raise ValueError("ParamschedHook needs the Runner's cfg.param_scheduler "
                             "(build the Runner with Runner.from_cfg)")
        loop = runner.train_loop
        self._epoch_based = not isinstance(loop, IterBasedTrainLoop)
        length: dict[str, int] = {"epoch_length": len(runner.train_dataloader)}
        if self._epoch_based:
            length["max_epochs"] = loop.max_epochs
        else:
            length["max_iters"] = loop.max_iters
            if runner.val_loop is not None:  # validation inside the one epoch
                self._val_interval = length["val_interval"] = self._validation_points(
                    loop, built)
        wrapper = runner.optim_wrapper
        if isinstance(built, dict):
            pairs = [(name, wrapper[name], built[name],
                      config[name] if isinstance(config, dict) and name in config else config)
                     for name in built]
        else:
            pairs = [("", wrapper, built, config)]
        self._client = Client(self.server, **self.client_options)
        for name, optim, schedulers, cfg in pairs:
            job = f"{self.job_id}.{name}" if name else self.job_id
            self._handles[job] = self._client.attach(
                _WrapperGroups(optim), job, list(cfg) if not isinstance(cfg, dict) else cfg,
                initial_from=_initial_groups(optim, schedulers), run_id=self.run_id,
                count="manual", **length)
        runner.param_schedulers = None  # the Runner's own never step

    @staticmethod
    def _validation_points(loop: Any, built: Any) -> int:
        """``train_cfg.val_interval``: the job's validation points. MMEngine's
        ``dynamic_intervals`` change the interval mid-run, which a job's fixed points
        cannot follow where ReduceOnPlateau reads them."""
        schedulers = [s for group in (built.values() if isinstance(built, dict) else [built])
                      for s in group]
        if len(loop.dynamic_intervals) > 1 and any(
                getattr(s, "need_val_args", False) for s in schedulers):
            raise ValueError(
                "ParamschedHook: train_cfg.dynamic_intervals with ReduceOnPlateau is not "
                "supported (a paramsched job validates every val_interval iterations)")
        return int(loop.val_interval)

    def _is_point(self, done: int, max_iters: int) -> bool:
        """Whether the loop validates (or may: ``val_begin``) after ``done`` iterations."""
        interval = self._val_interval
        return interval is not None and done > 0 and (done % interval == 0 or done == max_iters)

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        states = checkpoint.get(CHECKPOINT_KEY)
        if not self._handles or not getattr(runner, "_resume", False) or not states:
            return  # load_from without resume: weights only, a new schedule
        for job, handle in self._handles.items():
            handle.load_state_dict(states["jobs"][job])
            length = handle.job.epoch_length
            # Saved before that epoch's (or point's) validation, which a resume never
            # reruns: it is owed, and counts as not validated.
            if self._epoch_based:
                self._owed = bool(handle.iteration and length
                                  and handle.iteration % length == 0)
            else:
                self._owed = self._is_point(handle.iteration, handle.job.spec.max_iters)

    def before_train(self, runner: Any) -> None:
        for handle in self._handles.values():
            if handle.resume_required:
                handle.start_over()  # a new run without resume: a new schedule, as stock

    # ------------------------------------------------------------------ iterations

    def before_train_epoch(self, runner: Any) -> None:
        self._settle()

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        self._settle()
        for handle in self._handles.values():
            handle.apply_values()

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        for handle in self._handles.values():
            handle.step()
        if self._val_interval is not None and self._handles:
            # The val loop (if it runs here: val_begin) follows this hook.
            self._owed = self._is_point(runner.iter + 1, runner.max_iters)

    def after_train_epoch(self, runner: Any) -> None:
        if self._epoch_based and self._handles:
            self._owed = True

    def after_val_epoch(self, runner: Any, metrics: dict | None = None) -> None:
        if self._owed:
            self._decide(metrics)

    def after_train(self, runner: Any) -> None:
        self._settle()

    def after_run(self, runner: Any) -> None:
        for handle in self._handles.values():
            handle.detach()
        if self._client is not None:
            self._client.close()

    def _settle(self) -> None:
        if self._owed:
            self._decide(None)  # not validated this epoch (or at this point)

    def _decide(self, metrics: dict | None) -> None:
        self._owed = False
        for handle in self._handles.values():
            if self._epoch_based:
                handle.end_epoch(metrics)
            else:
                handle.record_validation(metrics)

    # ------------------------------------------------------------------ checkpoints

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        if self._handles:
            checkpoint[CHECKPOINT_KEY] = {
                "jobs": {job: h.state_dict() for job, h in self._handles.items()}}
