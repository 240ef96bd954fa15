"""The schedule engine: MMEngine ``param_scheduler`` semantics in pure Python.

Config in, validated ``JobSpec`` out (``build_job_spec``); a ``Timeline`` gives the
values of every scheduled param of every param group at any iteration, bit-identical
to what MMEngine's Runner produces. Standard library only.
"""

from .config import INF, JobSpec, SchedulerSpec, build_job_spec
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
    "INF",
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
