"""``paramsched health``: the standard gRPC health check, for container probes."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paramsched.api.v1 import scheduler_pb2

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name


def check_health(target: str, timeout: float) -> int:
    """Exit status: 0 when the server answers SERVING, 1 for anything else."""
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout)
    except grpc.RpcError as exc:
        print(f"{target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_health(args: argparse.Namespace) -> int:
    return check_health(args.target, args.timeout)
