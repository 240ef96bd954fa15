"""Errors raised by the schedule engine."""

from __future__ import annotations


class ConfigError(ValueError):
    """A job or scheduler config that MMEngine would reject or crash on.

    ``field`` is a dotted path to the offending input, e.g.
    ``param_scheduler[1].start_factor`` or ``epoch_length``.
    """

    def __init__(
        self,
        reason: str,
        *,
        field: str,
        index: int | None = None,
        scheduler_type: str | None = None,
    ) -> None:
        self.reason = reason
        self.index = index
        self.scheduler_type = scheduler_type
        if index is not None:
            prefix = f"param_scheduler[{index}]"
            self.field = f"{prefix}.{field}" if field else prefix
            where = f"param_scheduler[{index}] ({scheduler_type or 'unknown type'})"
            message = f"{where}: field '{field}': {reason}" if field else f"{where}: {reason}"
        else:
            self.field = field
            message = f"field '{field}': {reason}"
        super().__init__(message)


class DecisionPending(LookupError):
    """Values past an epoch end depend on that epoch's validation metrics.

    Raised when a ReduceOnPlateau scheduler is active at the end of ``epoch`` and no
    decision (metrics, or an explicit "no validation this epoch") is known yet.
    """

    def __init__(self, epoch: int, iteration: int) -> None:
        self.epoch = epoch
        self.iteration = iteration
        super().__init__(
            f"values from iteration {iteration} on wait for the validation metrics of epoch {epoch}"
        )


class MetricsError(ValueError):
    """Validation metrics that a ReduceOnPlateau scheduler cannot use."""

    def __init__(self, reason: str, *, field: str = "metrics") -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"field '{field}': {reason}")


class DecisionsChanged(ValueError):
    """A timeline was asked with a decision that differs from one it already used."""


class ScheduleArithmeticError(ConfigError):
    """The schedule's arithmetic fails at some iteration (MMEngine would crash there:
    a math domain error or an overflow), found while computing values. Names the
    scheduler (index, type) and the field its failing arithmetic comes from."""

    def __init__(self, iteration: int, exc: BaseException, *, index: int | None = None,
                 scheduler_type: str | None = None, field: str = "") -> None:
        self.iteration = iteration
        reason = (f"the schedule's arithmetic fails after iteration {iteration} "
                  f"({type(exc).__name__}: {exc}); MMEngine would crash there too")
        if index is None:
            super().__init__(reason, field="param_scheduler")
        else:
            super().__init__(reason, field=field, index=index, scheduler_type=scheduler_type)
