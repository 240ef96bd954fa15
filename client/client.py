"""``Client``: a connection to a paramsched server, and ``attach`` for optimizers.

One ``Client`` per process is enough; it holds one gRPC channel that every handle
shares. ``attach`` is the only call a training script needs (it imports torch); the
admin API (``AdminMixin``: list, read, audit, delete and change jobs, preview
schedules) is for operators, tools and the ``paramsched`` command, without torch.
"""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from paramsched.api.v1 import scheduler_pb2

from ._rpc import Connection
from .admin import AdminMixin
from .jobspec import Bounds, set_val_interval

if TYPE_CHECKING:
    import torch

    from .handle import ScheduleHandle
    from .ranks import resolve_rank
    from .runs import resolve_run_id
    from .spec import build_spec
else:
    # The torch layer loads on the first ``attach``: the admin API and the CLI run
    # where torch is not installed.
    def _torch_layer(module: str, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return getattr(importlib.import_module(f".{module}", __package__), name)(
                *args, **kwargs)

        call.__name__ = name
        return call

    ScheduleHandle = _torch_layer("handle", "ScheduleHandle")
    resolve_rank = _torch_layer("ranks", "resolve_rank")
    resolve_run_id = _torch_layer("runs", "resolve_run_id")
    build_spec = _torch_layer("spec", "build_spec")

ParamSchedulerConfig = Mapping[str, Any] | Sequence[Mapping[str, Any]]


class Client(AdminMixin):
    """Talks to the paramsched server at ``target`` (``"host:port"``).

    ``attach`` links a torch optimizer to a job (torch is imported then, not before);
    the admin methods (``list_jobs``, ``get_job``, ``values``, ``history``,
    ``delete_job``, ``preview``, ``reschedule``, ``set``, ``scale``, ``hold``,
    ``decay``, ``rewarm``, ``extend``: ``paramsched.client.admin``) need no torch.

    ``timeout``: seconds per RPC attempt. ``backoff_initial`` / ``backoff_max``: the
    retry delays after UNAVAILABLE or a deadline. ``wait_timeout``: how long a rank
    waits for values it cannot run without (plan exhausted, server down, a decision
    pending) before raising, and how long calls such as ``attach`` keep retrying.
    ``plan_size``: iterations of values fetched ahead, at least; a fast loop gets
    plans that last ``prefetch_seconds`` at its iteration rate, up to
    ``max_plan_size``. ``report_interval``: seconds between background progress
    reports.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 10.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        plan_size: int = 256,
        max_plan_size: int = 4096,
        prefetch_seconds: float = 2.0,
        wait_timeout: float = 300.0,
        report_interval: float = 1.0,
        channel_options: Sequence[tuple[str, Any]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | str | Path | None = None,
        client_certificate: bytes | str | Path | None = None,
        client_key: bytes | str | Path | None = None,
        load_balancing: str | None = None,
    ) -> None:
        if plan_size < 1:
            raise ValueError(f"plan_size must be >= 1, got {plan_size}")
        if wait_timeout <= 0 or report_interval <= 0:
            raise ValueError("wait_timeout and report_interval must be > 0 seconds")
        self.target = target
        self.plan_size = int(plan_size)
        self.max_plan_size = int(max_plan_size)
        self.prefetch_seconds = float(prefetch_seconds)
        self.wait_timeout = float(wait_timeout)
        self.report_interval = float(report_interval)
        if credentials is None and (tls or root_certificates or client_certificate
                                    or client_key):
            if (client_certificate is None) != (client_key is None):
                raise ValueError("mutual TLS needs both client_certificate and client_key")
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(root_certificates),
                private_key=_pem(client_key),
                certificate_chain=_pem(client_certificate))
        options = list(channel_options)
        if load_balancing:
            options.append(("grpc.lb_policy_name", load_balancing))
        self._conn = Connection(
            target,
            timeout=timeout,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            channel_options=options,
            credentials=credentials,
            token=token,
        )
        self._handles: weakref.WeakSet[ScheduleHandle] = weakref.WeakSet()

    def attach(
        self,
        optimizer: torch.optim.Optimizer,
        job_id: str,
        param_scheduler: ParamSchedulerConfig | None = None,
        *,
        epoch_length: int | None = None,
        max_epochs: int | None = None,
        max_iters: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        run_id: str | None = None,
        bounds: Bounds | None = None,
        max_jump_factor: float | None = None,
        count: str = "optimizer_step",
        initial_from: Any = None,
        val_interval: int | None = None,
    ) -> ScheduleHandle:
        """Attach ``optimizer`` to job ``job_id``; it holds iteration 0's values on return.

        With ``param_scheduler`` (MMEngine's config list) the job is created from it and
        the optimizer's current param-group values, or joined if it exists with the
        same config (a different one raises ``JobSpecMismatchError``). Without it the
        job must exist (``JobNotFoundError`` otherwise). Attach before loading an
        optimizer checkpoint: the job's initial values are read from the optimizer.

        ``run_id`` names this launch of the program (see ``paramsched.client.runs``:
        agreed through ``torch.distributed`` when a process group exists). When the job
        already has progress from another run, the handle holds no values and its first
        step raises ``ResumeRequiredError`` unless ``handle.load_state_dict(checkpoint)``
        or ``handle.start_over()`` comes first.

        ``count``: ``"optimizer_step"`` (default) counts an iteration per
        ``optimizer.step()``; ``"manual"`` leaves counting to the host, which calls
        ``handle.step()`` after every training iteration (so accumulation steps and AMP
        steps the GradScaler skipped still count, as in MMEngine's Runner).
        ``initial_from``: an object with ``param_groups`` (and ``defaults``) to read the
        job's initial values from instead of ``optimizer`` (a host whose own schedulers
        already changed the optimizer).
        ``val_interval`` (iteration-based jobs): validation every this many iterations
        and after the last one; a ReduceOnPlateau decision is due at each, which the
        host reports with ``handle.record_validation(metrics)``.
        """
        if not isinstance(job_id, str) or not job_id:
            raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
        rank, world_size = resolve_rank(rank, world_size)
        run = resolve_run_id(run_id, world_size)
        request = scheduler_pb2.AttachJobRequest(
            job_id=job_id, world_size=world_size, rank=rank, plan_size=self.plan_size,
            run_id=run,
        )
        if param_scheduler is not None:
            request.spec.CopyFrom(
                build_spec(
                    optimizer if initial_from is None else initial_from,
                    param_scheduler,
                    epoch_length=epoch_length,
                    max_epochs=max_epochs,
                    max_iters=max_iters,
                    bounds=bounds,
                    max_jump_factor=max_jump_factor,
                )
            )
            set_val_interval(request.spec, val_interval)
        elif any(v is not None for v in (epoch_length, max_epochs, max_iters, val_interval)):
            raise ValueError("epoch_length/max_epochs/max_iters/val_interval need a "
                             "param_scheduler config")
        response = self._conn.call(
            self._conn.stub.AttachJob,
            request,
            what=f"attaching to job {job_id!r} (rank {rank})",
            wait=self.wait_timeout,
        )
        handle = ScheduleHandle(
            self._conn,
            optimizer,
            response.job,
            response.plan,
            rank=rank,
            world_size=world_size,
            run_id=run,
            resume_required=response.resume_required,
            plan_size=self.plan_size,
            wait_timeout=self.wait_timeout,
            report_interval=self.report_interval,
            max_plan_size=self.max_plan_size,
            prefetch_seconds=self.prefetch_seconds,
            count=count,
        )
        self._handles.add(handle)
        return handle

    def close(self) -> None:
        """Detach every handle of this client and close the channel."""
        for handle in list(self._handles):
            handle.detach()
        self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.target!r})"


def _pem(value: bytes | str | Path | None) -> bytes | None:
    """PEM bytes, from bytes or a file path."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()
