"""The domain service: jobs, progress reports, plans, checkpoints, live changes.

No gRPC types here; ``core.SchedulerService`` is the entry point.
"""

from .core import SchedulerService
from .inputs import Limits, check_job_id, parse_spec, spec_difference
from .views import JobView, NoEvents, Plan, RescheduleResult, ServiceEvents, plan_of

__all__ = [
    "JobView",
    "Limits",
    "NoEvents",
    "Plan",
    "RescheduleResult",
    "SchedulerService",
    "ServiceEvents",
    "check_job_id",
    "parse_spec",
    "plan_of",
    "spec_difference",
]
