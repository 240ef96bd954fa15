"""``ScheduleHandle``: one optimizer attached to one job, on one rank.

Timing follows MMEngine's Runner: the values of iteration ``t`` are in the optimizer
while ``optimizer.step()`` of iteration ``t`` runs. Two optimizer hooks keep it so:

* the step *post*-hook of iteration ``t`` counts the iteration and applies the values
  of ``t + 1`` from the prefetched plan (a table look-up and a few dict writes); when
  they are not in the plan (it ran out, or they wait on an epoch's validation
  decision) it only notes that, so ``end_epoch`` can still supply the decision;
* the step *pre*-hook refuses to run an iteration whose values are not applied: it
  fetches them, blocking, for up to ``wait_timeout``, then raises. No value is guessed.

Progress and refills travel on a background thread (``reporter.Reporter``). Errors
from that thread (the job was resumed elsewhere, a rejected report) are raised in the
training thread at the next step.

Start-up: the plan ``attach`` brings is short (the server computes it inside the
attach), so a longer one is asked for before ``attach`` returns (the priming refill),
and while the loop's rate says it will outgrow its young plans, each asks for the next
on its first step. A refill is handed to the background thread with the GIL (``kick``),
and while its reply is due the training thread lets it in (``let_reply_in``): a loop
that never blocks would otherwise keep the GIL until the switch interval, again and
again, and outrun its plan.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import grpc
import torch

from paramsched.api.v1 import scheduler_pb2

from ._rpc import Connection
from .errors import (
    DecisionRequiredError,
    EpochError,
    JobReplacedError,
    ParamschedError,
    ResumeRequiredError,
    StaleGenerationError,
    from_rpc_error,
    is_retryable_report,
)
from .optim import Writer, apply_row, metrics_dict, read_values, writers
from .plan import NEVER, SHORT_PLAN, Plan, PlanSizer, Row, decode_plan, joined
from .reporter import YIELD_EVERY, YIELD_EVERY_LONG, Reporter

STATE_FORMAT = "paramsched.schedule/v2"
#: formats ``load_state_dict`` reads (v1: unsigned states of earlier versions).
READABLE_FORMATS = ("paramsched.schedule/v1", STATE_FORMAT)

log = logging.getLogger(__name__)

#: how long a rank that outran its plan waits for the reporter's refill in flight
#: before it asks the server itself (a healthy server answers in milliseconds).
IN_FLIGHT_WAIT = 0.5

#: optimizers with a live handle: attaching one twice would count every step twice.
_ATTACHED: weakref.WeakKeyDictionary[torch.optim.Optimizer, ScheduleHandle] = (
    weakref.WeakKeyDictionary()
)


class ScheduleHandle:
    """The link between one optimizer and one job; returned by ``Client.attach``."""

    def __init__(
        self,
        connection: Connection,
        optimizer: torch.optim.Optimizer,
        job: scheduler_pb2.Job,
        plan: scheduler_pb2.Plan,
        *,
        rank: int,
        world_size: int,
        plan_size: int,
        wait_timeout: float,
        report_interval: float,
        max_plan_size: int = 4096,
        prefetch_seconds: float = 2.0,
        run_id: str = "",
        resume_required: bool = False,
        count: str = "optimizer_step",
    ) -> None:
        if count not in ("optimizer_step", "manual"):
            raise ValueError(f"count must be 'optimizer_step' or 'manual', got {count!r}")
        if optimizer in _ATTACHED:
            raise ParamschedError(
                f"this optimizer is already attached to job {_ATTACHED[optimizer].job_id!r}; "
                "call handle.detach() first"
            )
        self._conn = connection
        self._optimizer = optimizer
        self.job_id: str = job.job_id
        self.rank = rank
        self.world_size = world_size
        self.run_id = run_id
        # Another run's progress is in the job: no values until a resume or a start-over.
        self._resume_required = resume_required
        self._plan_size = plan_size
        self._sizer = PlanSizer(plan_size, max_plan_size, prefetch_seconds)
        self._asked: Plan | None = None  # the plan whose refill was already requested
        # The attach's plan is short (the server computes it inside the attach); the
        # reporter asks for a longer one at once, so that the first refill is on its
        # way before the loop starts rather than after the loop's first steps.
        self._prime = True
        # A reply that continues the held plan in another layout (a live change added a
        # param) cannot be appended: the next request asks for a whole plan.
        self._ask_whole = False
        self._wait_timeout = wait_timeout
        self._lock = threading.Lock()
        self._fatal: BaseException | None = None
        self._last_epoch_ended: int | None = None
        self._warned_past_end = False
        self._detached = False
        self._done = plan.start_iteration  # iterations completed = the next one to run
        self._applied = -1  # the iteration whose values the optimizer holds
        self._row: Row = ()
        self._row_params: tuple[str, ...] = ()
        self._use_job(job, plan)
        if not resume_required:
            self._wait_for(self._done)
        self._sizer.restart(self._done)
        self._reporter = Reporter(
            connection, self, report_interval, name=f"paramsched-{self.job_id}-rank{rank}"
        )
        self._wake = self._reporter.wake
        self._kick = self._reporter.kick
        self._let_reply_in = self._reporter.let_reply_in
        self.count = count
        self._hooks = [optimizer.register_step_pre_hook(self._pre_step)]
        if count == "optimizer_step":
            self._hooks.append(optimizer.register_step_post_hook(self._post_step))
        _ATTACHED[optimizer] = self
        self._reporter.start()
        # The priming refill (see _prime) is on the wire when attach returns, as this
        # plan's refill; a first plan as long as a primed one is refilled as any other.
        self._asked = self._plan if self._primes(self._plan) else None
        self._kick()

    # ------------------------------------------------------------------ job

    def _use_job(self, job: scheduler_pb2.Job, plan: scheduler_pb2.Plan) -> None:
        """Adopt a job record (attach, resume): its generation, shape and first plan."""
        self._job = job
        self._generation = job.generation
        self._incarnation = job.incarnation
        self._max_iters = job.max_iters
        self._epoch_length = job.epoch_length if job.HasField("epoch_length") else None
        self._epoch_based = job.spec.HasField("max_epochs")
        # Validation points of an iteration-based job (record_validation).
        self._val_interval = job.spec.val_interval if job.spec.HasField("val_interval") else None
        self._params = tuple(job.params)
        self._writers: tuple[Writer, ...] = tuple(writers(
            self._optimizer, self._params, job.num_groups, job.momentum_via_betas, job.job_id
        ))
        self._adopt(self._decode(plan))
        self._hold_horizon(plan)

    def _hold_horizon(self, message: scheduler_pb2.Plan) -> None:
        """Keep the adopted plan's signed end: every report sends it back, so the server
        starts no change inside it even if its store lost the plan (one tuple, swapped
        in one assignment: the reporter thread reads it)."""
        self._horizon = (message.start_iteration + message.num_iterations,
                         message.horizon_token)

    def _decode(self, message: scheduler_pb2.Plan) -> Plan:
        """A wire plan with its writers. A live change may schedule a param the job did
        not schedule at attach, so each plan says which params its rows hold."""
        plan = decode_plan(message, max_iters=self._max_iters,
                           growing=self._sizer.grows_past(message.num_iterations))
        if plan.n and plan.num_groups != self._job.num_groups:
            raise ParamschedError(
                f"plan for job {self.job_id!r} has {plan.num_groups} groups, the job "
                f"{self._job.num_groups}"
            )
        row_writers = self._writers
        if plan.params != self._params:
            row_writers = tuple(writers(self._optimizer, plan.params, plan.num_groups,
                                        self._job.momentum_via_betas, self.job_id))
        return replace(plan, writers=row_writers)

    def _adopt(self, plan: Plan) -> None:
        """Make ``plan`` the current one (the caller holds the lock or owns the handle)."""
        self._plan = plan
        self._max_iters = plan.max_iters or self._max_iters
        self._params, self._writers = plan.params or self._params, plan.writers

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._optimizer

    @property
    def iteration(self) -> int:
        """Iterations completed: the index of the iteration that runs next."""
        return self._done

    @property
    def epoch(self) -> int | None:
        """The epoch the next iteration belongs to (None for iteration-based jobs)."""
        if not self._epoch_based or not self._epoch_length:
            return None
        return self._done // self._epoch_length

    @property
    def finished(self) -> bool:
        """Whether every iteration of the job has run here (``iteration == max_iters``):
        a script resumed from the job's last checkpoint has nothing left to train."""
        return not self._resume_required and self._done >= self._max_iters

    @property
    def resume_required(self) -> bool:
        """Whether this handle waits for ``load_state_dict`` or ``start_over`` (the job
        has progress from another run) before its first step."""
        return self._resume_required

    @property
    def generation(self) -> int:
        """The job's generation this rank runs in (bumped by every resume)."""
        return self._generation

    @property
    def max_iters(self) -> int:
        return self._max_iters

    @property
    def params(self) -> tuple[str, ...]:
        """The scheduled param_group keys, e.g. ``("lr", "momentum")``."""
        return self._params

    @property
    def values(self) -> list[dict[str, float]]:
        """The scheduled values in the optimizer now, one dict per param group."""
        if self._row:
            params = self._row_params
            width = len(params)
            return [
                dict(zip(params, self._row[g * width : (g + 1) * width], strict=True))
                for g in range(self._job.num_groups)
            ]
        return read_values(self._optimizer, self._params, self._job.momentum_via_betas)

    @property
    def job(self) -> scheduler_pb2.Job:
        """The job record as the server last sent it (spec, params, generation)."""
        return self._job

    # ------------------------------------------------------------------ hot path

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._applied != self._done or self._fatal is not None:
            self._catch_up()

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        t = self._done + 1
        self._done = t
        plan = self._plan
        k = t - plan.start
        if 0 <= k < plan.n:
            width = plan.width
            row = plan.values[k * width : (k + 1) * width]
            apply_row(self._optimizer, plan.writers, row)
            self._row, self._row_params = row, plan.params
            self._applied = t
            if t >= plan.refill_at:
                if self._asked is not plan:
                    self._asked = plan
                    self._kick()
                elif not t & 15:
                    # The refill is on the wire: let its reply in. A long plan's
                    # reply has time to spare until a quarter of the plan is left.
                    if plan.n < SHORT_PLAN:
                        self._let_reply_in(YIELD_EVERY)
                    elif 4 * k >= 3 * plan.n:
                        self._let_reply_in(YIELD_EVERY_LONG)
        else:
            self._plan_ran_out(t)

    def step(self) -> None:
        """One training iteration done (``count="manual"``): apply the next one's values.

        For hosts that count iterations themselves (MMEngine's Runner, HF, Lightning):
        call it once per training iteration, whether or not ``optimizer.step()`` ran
        (gradient accumulation, an AMP step the GradScaler skipped), exactly where
        MMEngine's ParamSchedulerHook steps its iteration schedulers.
        """
        if self.count != "manual":
            raise ParamschedError(
                f"job {self.job_id!r}: handle.step() needs attach(..., count='manual'); "
                "this handle counts optimizer.step() calls")
        if self._fatal is not None:
            raise self._fatal
        self._post_step(None, None, None)

    def apply_values(self) -> None:
        """Make sure the optimizer holds the values of the iteration that runs next
        (blocking for them if needed), and write them again: after
        ``optimizer.load_state_dict`` replaced the groups, before a manual iteration."""
        if self._applied != self._done or self._fatal is not None:
            self._catch_up()
        elif self._row and self._plan.covers(self._done):
            self._apply(self._done)

    # ------------------------------------------------------------------ slow path

    def _plan_ran_out(self, t: int) -> None:
        """After a step: fetch the next values now, unless they wait on the decision of
        the epoch that ends here (``end_epoch`` brings it) or the job is over."""
        self._wake.set()
        if t > self._max_iters:
            return
        plan = self._plan
        if plan.waits_for_epoch is not None and plan.stop == t:
            return
        # Outran the refill: the loop is faster than plans of this size can follow.
        self._sizer.outran()
        self._wait_for(t, until_decision=True)

    def _catch_up(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._resume_required:
            raise self._resume_error()
        t = self._done
        if t > self._max_iters:
            if not self._warned_past_end:
                self._warned_past_end = True
                warnings.warn(
                    f"job {self.job_id!r} has {self._max_iters} iterations but the optimizer "
                    f"stepped {t} times; the last values are held",
                    RuntimeWarning,
                    stacklevel=4,
                )
            self._applied = t
            return
        self._wait_for(t)

    def _apply(self, t: int) -> bool:
        plan = self._plan
        if not plan.covers(t):
            return False
        row = plan.row(t)
        apply_row(self._optimizer, plan.writers, row)
        self._row, self._row_params = row, plan.params
        self._applied = t
        return True

    def _request(
        self, iteration: int, plan_size: int | None = None
    ) -> scheduler_pb2.ReportProgressRequest:
        return scheduler_pb2.ReportProgressRequest(
            job_id=self.job_id,
            generation=self._generation,
            rank=self.rank,
            iteration=iteration,
            plan_size=self._sizer.want if plan_size is None else plan_size,
            incarnation=self._incarnation,
            held_until=self._horizon[0],
            horizon_token=self._horizon[1],
            skip_held=not self._ask_whole,
        )

    def _wait_for(self, t: int, *, until_decision: bool = False) -> bool:
        """Apply the values of iteration ``t``, asking the server until they come.

        Transport failures are retried with backoff; a pending validation decision is
        polled, or with ``until_decision`` ends the wait (returns False) when it is the
        decision of the epoch that ends at ``t``. Gives up after ``wait_timeout``
        seconds with an error that says which server, job and iteration, and what was
        missing.
        """
        start = time.monotonic()
        backoff = self._conn.backoff()
        # A refill the reporter already sent is the quickest way to the values: wait
        # for its reply (once, the GIL released) rather than queue a request behind it;
        # briefly, as a reply stuck on a server that went away must not use up the
        # wait (and its warnings) below.
        reporter: Reporter | None = getattr(self, "_reporter", None)
        if reporter is not None and not self._apply(t) and not reporter.wait_idle(0):
            reporter.wait_idle(min(IN_FLIGHT_WAIT, self._wait_timeout))
        # A wait of more than a few seconds is logged (WARNING), then at intervals.
        waiting = self._conn.waiting(
            f"job {self.job_id!r} (rank {self.rank}): values of iteration {t}",
            self._wait_timeout)
        last: BaseException | None = None
        waits: int | None = None
        while not self._apply(t):
            plan = self._plan
            if plan.waits_for_epoch is not None and plan.stop <= t:
                waits = plan.waits_for_epoch
                if until_decision and plan.stop == t:
                    return False
                if self.world_size == 1 and self._last_epoch_ended != waits:
                    raise self._decision_error(t, waits, time.monotonic() - start)
            try:
                response = self._conn.call_once(self._conn.stub.ReportProgress, self._request(t))
            except grpc.RpcError as exc:
                if not is_retryable_report(exc):
                    raise self._rpc_failed(exc, f"fetching the values of iteration {t}") from None
                last = exc
                waiting.failed(exc)
                delay = backoff.next_delay()
            else:
                self.merge_plan(response.plan)
                if self._apply(t):
                    return True
                if response.plan.HasField("waits_for_epoch"):
                    waits = response.plan.waits_for_epoch
                    if until_decision and response.plan.start_iteration == t:
                        return False
                last = None
                if waits is not None:
                    waiting.failed(None, waits_for=f"the validation decision of epoch {waits}")
                delay = min(backoff.next_delay(), 1.0)
            waited = time.monotonic() - start
            if waited + delay > self._wait_timeout:
                if waits is not None and last is None:
                    raise self._decision_error(t, waits, waited)
                raise self._conn.unavailable(
                    f"job {self.job_id!r} (rank {self.rank}): values of iteration {t}",
                    waited,
                    last,
                    extra=f" (wait_timeout={self._wait_timeout:g}s)",
                )
            time.sleep(delay)
        return True

    def _decision_error(self, t: int, epoch: int, waited: float) -> DecisionRequiredError:
        who = (
            "this process never reported it"
            if self.world_size == 1
            else f"no rank reported it within {waited:.1f}s"
        )
        if self._val_interval is not None:
            return DecisionRequiredError(
                f"job {self.job_id!r} on {self._conn.target}: the values of iteration {t} "
                f"wait for the decision of the validation after iteration {t} (ReduceOnPlateau)"
                f" and {who}; call handle.record_validation(metrics) after every "
                f"{self._val_interval} iterations and after the last one (metrics=None when "
                "no validation ran)")
        return DecisionRequiredError(
            f"job {self.job_id!r} on {self._conn.target}: the values of iteration {t} wait "
            f"for the validation decision of epoch {epoch} (ReduceOnPlateau) and {who}; call "
            "handle.end_epoch(metrics) after every epoch (metrics=None when no validation ran)"
        )

    def _rpc_failed(self, exc: grpc.RpcError, what: str) -> ParamschedError:
        error = from_rpc_error(exc, f"job {self.job_id!r} (rank {self.rank}): {what}",
                               server=self._conn.target)
        if isinstance(error, StaleGenerationError):
            error = self._stale(error)
            self._fatal = error
        return error

    def _resume_error(self) -> ResumeRequiredError:
        return ResumeRequiredError(
            f"job {self.job_id!r} on {self._conn.target} already has progress from another "
            f"run (this is run {self.run_id!r}); before the first step, resume it with "
            "handle.load_state_dict(checkpoint), train it again from iteration 0 with "
            "handle.start_over(), or attach with a new job id")

    def _stale(self, error: BaseException) -> StaleGenerationError:
        if isinstance(error, JobReplacedError):
            return JobReplacedError(
                f"job {self.job_id!r} (incarnation {self._incarnation!r}) that rank "
                f"{self.rank} runs was deleted and created again, or the job store lost it; "
                "stop this rank: resume from a checkpoint (handle.load_state_dict) or start "
                f"a new job. Server said: {error}",
                code=grpc.StatusCode.FAILED_PRECONDITION,
            )
        return StaleGenerationError(
            f"job {self.job_id!r} was resumed from a checkpoint after rank {self.rank} "
            f"attached (this rank runs generation {self._generation}); stop this rank, "
            f"restart it and call handle.load_state_dict(checkpoint). Server said: {error}",
            code=grpc.StatusCode.FAILED_PRECONDITION,
        )

    # ------------------------------------------------------------------ reporter session

    def progress_request(self, last_sent: int | None) -> scheduler_pb2.ReportProgressRequest | None:
        if self._resume_required:
            return None
        self._sizer.observe(self._done, self._plan.n)
        done = min(self._done, self._max_iters)
        plan = self._plan
        prime, self._prime = self._prime and self._primes(plan), False
        refill_due = self._done <= self._max_iters and (
            prime or self._done >= plan.refill_at or not plan.covers(self._done)
        )
        if done == last_sent and not refill_due:
            return None
        if prime and refill_due:
            return self._request(done, self._sizer.first)
        # A report that needs no refill asks for a one-iteration plan: nothing to decode.
        return self._request(done, None if refill_due else 1)

    def _primes(self, plan: Plan) -> bool:
        """Whether a priming refill would bring more than ``plan`` holds (it asks for
        ``first`` iterations, and its reply leaves out what the rank holds)."""
        return plan.refill_at != NEVER and self._sizer.first > plan.stop - self._done

    def merge_plan(self, message: scheduler_pb2.Plan) -> None:
        """Adopt ``message`` if it is of this generation and reaches further.

        Values never change within a generation, so any plan that covers the next
        iteration is as good as another; keep the one that lasts longest. A reply to a
        ``skip_held`` request starts where the held plan ends: it is appended.
        """
        if message.generation != self._generation or message.incarnation != self._incarnation:
            return
        new = self._decode(message)
        whole = True
        with self._lock:
            if new.generation != self._generation or message.incarnation != self._incarnation:
                return
            need = self._done
            cur = self._plan
            if cur.covers(need) and need < new.start <= cur.stop and (
                    new.n or new.waits_for_epoch is not None):
                if new.n == 0 or (new.params == cur.params and new.num_groups == cur.num_groups):
                    new = joined(cur, need, new, self._sizer.grows_past(new.stop - need))
                    whole = False
                else:
                    self._ask_whole = True
                    self._asked = None  # the next step past refill_at asks again, whole
            new_ok, cur_ok = new.covers(need), cur.covers(need)
            if (new_ok or not cur_ok) and (new.stop >= cur.stop or not cur_ok):
                self._adopt(new)
                self._hold_horizon(message)
                if whole:
                    self._ask_whole = False

    def fail(self, error: BaseException, generation: int) -> None:
        if generation != self._generation:
            return  # a report from before a resume of our own
        if isinstance(error, StaleGenerationError):
            error = self._stale(error)
        self._fatal = error

    # ------------------------------------------------------------------ public API

    def end_epoch(self, metrics: Mapping[str, Any] | None = None) -> None:
        """Report that an epoch ended, with its validation metrics (None: not validated).

        Call it after the epoch's last ``optimizer.step()``. When the next values wait
        on this epoch's decision (ReduceOnPlateau), the report is sent now and those
        values are in the optimizer when this returns. When they do not (no plateau
        scheduler is active, or another rank decided first), nothing needs sending:
        the iteration count already tells the server where the epoch ended.
        """
        self._check_alive()
        if not self._epoch_based or not self._epoch_length:
            raise EpochError(
                f"job {self.job_id!r} is iteration-based (max_iters); it has no epochs to end"
                + ("; report its validations with handle.record_validation(metrics)"
                   if self._val_interval is not None else ""))
        length, done = self._epoch_length, self._done
        if done == 0 or done % length:
            raise EpochError(
                f"end_epoch() after {done} iteration(s) of job {self.job_id!r}: epochs end every "
                f"{length} iterations (epoch_length), the next one after iteration "
                f"{(done // length + 1) * length}"
            )
        epoch = done // length - 1
        if epoch == self._last_epoch_ended:
            raise EpochError(f"epoch {epoch} of job {self.job_id!r} already ended")
        self._decide(epoch, metrics, f"ending epoch {epoch}")

    def record_validation(self, metrics: Mapping[str, Any] | None = None) -> None:
        """Report the validation at this iteration of an iteration-based job with
        ``val_interval`` (``metrics=None``: no validation ran here).

        Call it when ``handle.iteration`` is a validation point: a multiple of
        ``val_interval``, or the job's last iteration (MMEngine's ``IterBasedTrainLoop``
        validates there too), after that iteration's step. As with ``end_epoch``, the
        values that wait on it are in the optimizer when this returns; a point nobody
        waits on (no ReduceOnPlateau active) sends nothing.
        """
        self._check_alive()
        interval, done = self._val_interval, self._done
        if interval is None:
            raise EpochError(
                f"job {self.job_id!r} has no validation points: "
                + ("call handle.end_epoch(metrics) at its epoch ends" if self._epoch_based
                   else "attach with val_interval= (iteration-based jobs)"))
        last = self._job.spec.max_iters
        if done == 0 or done > last or (done % interval and done != last):
            raise EpochError(
                f"record_validation() after {done} iteration(s) of job {self.job_id!r}: it "
                f"validates every {interval} iterations (val_interval) and after the last "
                f"one ({last}), the next time after iteration "
                f"{min((done // interval + 1) * interval, last)}")
        key = -(-done // interval) - 1  # the server's key of this validation point
        if key == self._last_epoch_ended:
            raise EpochError(f"the validation after iteration {done} of job {self.job_id!r} "
                             "was already recorded")
        self._decide(key, metrics, f"recording the validation after iteration {done}",
                     validation_at=done)

    def _decide(self, key: int, metrics: Mapping[str, Any] | None, what: str, *,
                validation_at: int | None = None) -> None:
        """Send decision ``key`` (an epoch, or a validation point) if values wait on it."""
        done = self._done
        values = metrics_dict(metrics)
        if self._applied == done:
            # The values after this point are known already: the schedule does not
            # depend on these metrics (or another rank decided). The iteration count in
            # the next progress report says all the server needs.
            self._last_epoch_ended = key
            return
        request = self._request(done)
        if validation_at is None:
            request.epoch_end = key
        else:
            request.validation_at = validation_at
        request.has_metrics = values is not None
        if values:
            request.metrics.update(values)
        what = f"job {self.job_id!r} (rank {self.rank}): {what}"
        try:
            response = self._conn.call(
                self._conn.stub.ReportProgress, request, what=what, wait=self._wait_timeout
            )
        except StaleGenerationError as exc:
            self._fatal = self._stale(exc)
            raise self._fatal from None
        self._last_epoch_ended = key
        self.merge_plan(response.plan)
        self._wait_for(done)

    def state_dict(self) -> dict[str, Any]:
        """The schedule's checkpoint: plain strings and ints (``torch.load(weights_only=True)``).

        It holds the job's spec and every decision up to this iteration, so it can
        recreate the job on a server that never saw it.
        """
        self._check_alive()
        iteration = min(self._done, self._max_iters)
        what = f"job {self.job_id!r}: saving the schedule state at iteration {iteration}"
        response = self._conn.call(
            self._conn.stub.GetState,
            scheduler_pb2.GetStateRequest(job_id=self.job_id, iteration=iteration,
                                          generation=self._generation,
                                          incarnation=self._incarnation),
            what=what,
            wait=self._wait_timeout,
        )
        return {
            "format": STATE_FORMAT,
            "job_id": self.job_id,
            "iteration": iteration,
            "generation": self._generation,
            "state_json": response.state_json,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any], *, fork: bool = False,
                        allow_unsigned: bool = False) -> None:
        """Resume from ``state_dict()``: a new generation, values of its next iteration.

        Works against any server, including one whose store is empty. Every rank of a
        run loads the same checkpoint and they share one new generation; another run
        loading it again gets another generation (which stops this one's ranks).
        ``fork=True`` starts this job from another job's checkpoint (audited);
        ``allow_unsigned=True`` (admin tokens) loads a state this service did not sign.
        """
        if self._detached:
            raise ParamschedError(f"the handle of job {self.job_id!r} is detached")
        if not isinstance(state_dict, Mapping) or "state_json" not in state_dict:
            raise ValueError("not a paramsched state_dict (from handle.state_dict())")
        fmt = state_dict.get("format", STATE_FORMAT)
        if fmt not in READABLE_FORMATS:
            raise ValueError(f"unknown paramsched state format {fmt!r} (this client reads "
                             f"{', '.join(READABLE_FORMATS)})")
        request = scheduler_pb2.LoadStateRequest(
            job_id=self.job_id, state_json=str(state_dict["state_json"]),
            plan_size=self._plan_size, run_id=self.run_id, world_size=self.world_size,
            rank=self.rank, fork=fork, allow_unsigned=allow_unsigned,
        )
        response = self._conn.call(
            self._conn.stub.LoadState,
            request,
            what=f"job {self.job_id!r}: loading the schedule state",
            wait=self._wait_timeout,
        )
        self._restart(response.job, response.plan)

    def start_over(self) -> None:
        """Train this job again from iteration 0, in a new generation for this run
        (audited): the other run's progress, decisions and changes are dropped. Every
        rank of the run may call it; they share the new generation."""
        if self._detached:
            raise ParamschedError(f"the handle of job {self.job_id!r} is detached")
        request = scheduler_pb2.AttachJobRequest(
            job_id=self.job_id, world_size=self.world_size, rank=self.rank,
            plan_size=self._plan_size, run_id=self.run_id, start_over=True)
        response = self._conn.call(
            self._conn.stub.AttachJob, request,
            what=f"job {self.job_id!r}: starting over", wait=self._wait_timeout)
        self._restart(response.job, response.plan)

    def _restart(self, job: scheduler_pb2.Job, plan: scheduler_pb2.Plan) -> None:
        """Adopt a new generation of the job (resume, start-over) from ``plan``'s start."""
        with self._lock:
            self._reporter.reset()
            self._use_job(job, plan)
            self._done = plan.start_iteration
            self._applied = -1
            self._row = ()
            self._last_epoch_ended = None
            self._warned_past_end = False
            self._fatal = None
            self._resume_required = False
            self._sizer.restart()
            self._prime = True
        # A checkpoint taken at an epoch end before end_epoch() waits for that decision:
        # the caller may still make it (end_epoch), the next step insists on it.
        self._wait_for(self._done, until_decision=True)
        self._asked = self._plan if self._primes(self._plan) else None
        self._kick()  # the priming refill

    def _check_alive(self) -> None:
        if self._detached:
            raise ParamschedError(f"the handle of job {self.job_id!r} is detached")
        if self._fatal is not None:
            raise self._fatal
        if self._resume_required:
            raise self._resume_error()

    def detach(self) -> None:
        """Remove the optimizer hooks, stop the reporter and tell the server where this
        rank stopped (best effort: a server that is down is not waited for)."""
        if self._detached:
            return
        self._detached = True
        for hook in self._hooks:
            hook.remove()
        if _ATTACHED.get(self._optimizer) is self:
            del _ATTACHED[self._optimizer]
        self._reporter.close(timeout=1.0)  # a daemon: a hung RPC must not hang detach
        if self._fatal is None:
            try:
                self._reporter.report_progress(timeout=min(self._conn.timeout, 2.0))
            except grpc.RpcError as exc:
                log.debug("paramsched job %r: final report failed: %s", self.job_id, exc)

    close = detach

    def __enter__(self) -> ScheduleHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        return (
            f"ScheduleHandle(job_id={self.job_id!r}, rank={self.rank}/{self.world_size}, "
            f"iteration={self._done}, generation={self._generation})"
        )
