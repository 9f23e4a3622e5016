"""Access control for the network front-ends: an optional bearer token (HTTP `Authorization`
header, gRPC `authorization` metadata) and TLS from configured files. The Unix socket relies
on its file mode and group instead."""

from __future__ import annotations

import hmac
import ssl

from prometheus_client import Counter

HTTP_HEALTH = frozenset({"/v2/health/live", "/v2/health/ready"})
# grpc.health.v1 Check is let through here, but answers about a model (a non-empty service) only
# with the token, as HTTP's /v2/models/<m>/ready (grpc_health.py); Watch holds a stream: token.
GRPC_HEALTH = frozenset({"/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady",
                         "/grpc.health.v1.Health/Check"})


class Access:
    def __init__(self, token: str | None, open_health: bool, refused: Counter):
        self.required = token is not None
        self.open_health = open_health
        self._expected = f"Bearer {token}".encode() if token else b""
        self._refused = refused

    def allows(self, protocol: str, presented: str | None, is_health: bool) -> bool:
        """Whether a call may proceed; refusals are counted (and say nothing about why)."""
        if not self.required or (is_health and self.open_health):
            return True
        # (aiohttp keeps a header's non-UTF-8 bytes as surrogates: they compare unequal, not fail)
        if presented is not None and hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self._expected):
            return True
        self._refused.labels(protocol).inc()
        return False


def tls_context(cert: str, key: str, alpn: list[str] | None = None) -> ssl.SSLContext | None:
    if not cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context
