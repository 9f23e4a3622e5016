"""The standard gRPC health service (grpc.health.v1.Health, grpclib's generated code): service ""
is the server (SERVING while ready, NOT_SERVING while starting, from SIGTERM on, or while a model
of server.ready_models is not READY: daemon/readiness.py), any other service name is a model
(SERVING while its serving version is ready, NOT_SERVING from SIGTERM on). Check answers NOT_FOUND for an
unknown name, Watch SERVICE_UNKNOWN, as the health-checking spec says.

With a token, only Check of service "" is open (as HTTP's /v2/health/*, unless
auth.open_health = false): Check of a model and every Watch need it, else UNAUTHENTICATED, so an
unauthenticated client learns nothing about models and cannot hold the Watch slots.

Requests go through the inference service's receive path (bounded, compressed or not). A Watch
looks at the status every WATCH_POLL_S and sends it when it changes; at most MAX_WATCHES run at
once (more: RESOURCE_EXHAUSTED), and each ends with UNAVAILABLE once the server drains, after
sending NOT_SERVING, so that shutdown never waits on one.
"""

from __future__ import annotations

import asyncio

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthBase
from grpclib.health.v1.health_pb2 import HealthCheckResponse

from inferd.common.errors import ErrorCode, InferdError, clip
from inferd.daemon.dataplane import DataPlane
from inferd.daemon.frontends.auth import Access
from inferd.daemon.frontends.grpc import _rpc
from inferd.daemon.requests import RequestLimits

MAX_WATCHES = 64  # Watch streams open at once, over all connections
WATCH_POLL_S = 0.25  # how often a Watch looks at the status


class HealthServicer(HealthBase):
    def __init__(self, dataplane: DataPlane, limits: RequestLimits, access: Access):
        self.dataplane = dataplane
        self.limits = limits
        self.access = access
        self.watches = 0

    def _require_token_for(self, service: str, stream) -> None:
        """A model's health needs the token (require_token lets every Check through; Watch never
        gets here without it)."""
        if not service or not self.access.required:
            return
        presented = stream.metadata.get("authorization")
        if not self.access.allows("grpc", presented if isinstance(presented, str) else None, False):
            raise GRPCError(Status.UNAUTHENTICATED, "unauthenticated")

    def status(self, service: str) -> int | None:
        """The service's serving status; None for a name that is neither "" nor a model."""
        if not service:
            return HealthCheckResponse.SERVING if self.dataplane.state.ready else HealthCheckResponse.NOT_SERVING
        try:
            ready = self.dataplane.model_ready(service)
        except InferdError as e:
            if e.code is not ErrorCode.NOT_FOUND:
                raise
            return None
        return HealthCheckResponse.SERVING if ready else HealthCheckResponse.NOT_SERVING

    @_rpc()
    async def Check(self, request, stream):
        self._require_token_for(request.service, stream)
        status = self.status(request.service)
        if status is None:
            raise GRPCError(Status.NOT_FOUND, f"unknown service {clip(request.service)!r}")
        return HealthCheckResponse(status=status)

    @_rpc()
    async def Watch(self, request, stream):
        if self.watches >= MAX_WATCHES:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, f"{MAX_WATCHES} health watches are open already")
        self.watches += 1
        try:
            sent = None
            while True:
                status = self.status(request.service)
                status = HealthCheckResponse.SERVICE_UNKNOWN if status is None else status
                if self.dataplane.state.draining:
                    status = HealthCheckResponse.NOT_SERVING
                if status != sent:
                    await stream.send_message(HealthCheckResponse(status=status))
                    sent = status
                if self.dataplane.state.draining:
                    raise GRPCError(Status.UNAVAILABLE, "the server is shutting down")
                await asyncio.sleep(WATCH_POLL_S)
        finally:
            self.watches -= 1
