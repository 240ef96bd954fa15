"""The schedule engine: MMEngine ``param_scheduler`` semantics in pure Python.

Config in, validated ``JobSpec`` out (``build_job_spec``); a ``Timeline`` gives the
values of every scheduled param of every param group at any iteration, bit-identical
to what MMEngine's Runner produces. Standard library only.

A job's values are computed with the engine semantics version it was created with
(``JobSpec.semantics``, see ``config.SEMANTICS_VERSIONS``), so a fix to the semantics
never changes the values of a job already running.
"""

from .config import (
    CURRENT_SEMANTICS,
    INF,
    SEMANTICS_VERSIONS,
    JobSpec,
    SchedulerSpec,
    build_job_spec,
)
from .errors import (
    ConfigError,
    DecisionPending,
    DecisionsChanged,
    MetricsError,
    ScheduleArithmeticError,
)
from .replay import Decisions, Metrics, ReplayState
from .timeline import GroupValues, Timeline

__all__ = [
    "CURRENT_SEMANTICS",
    "INF",
    "SEMANTICS_VERSIONS",
    "ConfigError",
    "DecisionPending",
    "Decisions",
    "DecisionsChanged",
    "GroupValues",
    "JobSpec",
    "Metrics",
    "MetricsError",
    "ReplayState",
    "ScheduleArithmeticError",
    "SchedulerSpec",
    "Timeline",
    "build_job_spec",
]
