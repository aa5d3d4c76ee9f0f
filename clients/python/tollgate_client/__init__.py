"""Fail-safe clients for the Tollgate egress gateway.

Selected hosts are sent through Tollgate; when Tollgate itself is unavailable
the call goes directly to the provider — but only when the request provably did
not reach the provider through the gateway. Policy answers (403, 429, ...) are
returned as is; a non-idempotent request that may already have been forwarded
is never re-sent. See README.md.

requests:  ``tollgate_client.requests_adapter.session()`` / ``TollgateAdapter``
httpx:     ``tollgate_client.httpx_transport.client()`` / ``async_client()`` /
           ``TollgateTransport`` / ``AsyncTollgateTransport``
"""

from __future__ import annotations

from .config import PROXY, ROUTE, Config, ConfigError
from .core import (
    GATEWAY_FAULT_CODES,
    GATEWAY_FAULT_MAYBE_SENT,
    GATEWAY_FAULT_NOT_SENT,
    GLOBAL_STATS,
    Breaker,
    Core,
    health_check,
)

__all__ = [
    "Config", "ConfigError", "Core", "Breaker", "ROUTE", "PROXY", "health_check", "stats",
    "reset_stats", "GATEWAY_FAULT_CODES", "GATEWAY_FAULT_NOT_SENT", "GATEWAY_FAULT_MAYBE_SENT",
]


def stats() -> dict:
    """Process-wide counters over every client: via_gateway, fallbacks
    (and fallbacks_by_reason), not_resent, breaker_opened, probes, unmanaged."""
    return GLOBAL_STATS.snapshot()


def reset_stats() -> None:
    GLOBAL_STATS.reset()
