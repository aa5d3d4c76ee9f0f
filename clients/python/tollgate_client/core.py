"""The transport-independent half of the library: when to try the gateway,
when a failure allows a direct call, the circuit breaker, counters and the
fallback log line. The adapters (requests_adapter, httpx_transport) only
translate their library's exceptions into the `Outcome` kinds below.

The one rule everything here enforces: a request is re-sent directly only when
it provably did not reach the provider through the gateway — nothing was sent
to the gateway at all, or the gateway answered with its own fault code whose
catalogue entry (crates/tollgate-policy/src/error.rs) says nothing was sent
upstream. A policy answer (403, 429, ...) is returned to the caller as is."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Mapping, Optional

from .config import Config

log = logging.getLogger("tollgate_client")

#: `tollgate-error` codes whose fault is the gateway's own (`Fault::Gateway` in
#: error.rs) AND that are retry-safe there: nothing was sent upstream, so any
#: method may be re-sent directly.
GATEWAY_FAULT_NOT_SENT = frozenset({"shutting_down", "limit_store_unavailable"})
#: Gateway faults that are NOT retry-safe: the request may have been forwarded
#: before the failure, so only idempotent requests are re-sent directly.
GATEWAY_FAULT_MAYBE_SENT = frozenset({"internal_error"})
GATEWAY_FAULT_CODES = GATEWAY_FAULT_NOT_SENT | GATEWAY_FAULT_MAYBE_SENT

#: Methods RFC 9110 defines as idempotent; other methods are idempotent only
#: when the caller sends an `Idempotency-Key` header.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def is_idempotent(method: str, headers: Mapping[str, str]) -> bool:
    if method.upper() in IDEMPOTENT_METHODS:
        return True
    return any(k.lower() == "idempotency-key" for k in headers.keys())


# -- what happened on the gateway attempt ------------------------------------

NOT_SENT = "not_sent"            # nothing reached the gateway (refused, connect timeout, DNS)
MAYBE_SENT = "maybe_sent"        # connection broke after the request may have been written
TIMEOUT = "read_timeout"         # the gateway (or the provider behind it) is slow: not a fault signal
TUNNEL_REFUSED = "tunnel_refused"  # CONNECT answered non-2xx; status alone cannot tell policy from fault
OTHER = "other"                  # anything else: surfaced unchanged


@dataclass
class Decision:
    fallback: bool
    reason: str
    gateway_fault: bool
    code: Optional[str] = None


def decide_on_error(kind: str, detail: str, idempotent: bool, resendable: bool) -> Decision:
    """After an exception on the gateway attempt: go direct, or raise?"""
    if kind == NOT_SENT:
        return Decision(resendable, detail, gateway_fault=True)
    if kind == MAYBE_SENT:
        # The gateway may already have forwarded it: re-send only what is idempotent.
        return Decision(idempotent and resendable, detail, gateway_fault=True)
    return Decision(False, detail, gateway_fault=False)


def decide_on_response(code: Optional[str], idempotent: bool, resendable: bool) -> Decision:
    """After the gateway answered: `code` is its `tollgate-error` header (None when
    the response was the provider's). Only the gateway's own faults go direct."""
    if code in GATEWAY_FAULT_NOT_SENT:
        return Decision(resendable, "gateway_error", gateway_fault=True, code=code)
    if code in GATEWAY_FAULT_MAYBE_SENT:
        return Decision(idempotent and resendable, "gateway_error", gateway_fault=True, code=code)
    return Decision(False, "answered", gateway_fault=False, code=code)


# -- counters ---------------------------------------------------------------

class Stats:
    """Thread-safe counters; `snapshot()` returns a plain dict."""

    KEYS = ("via_gateway", "fallbacks", "not_resent", "breaker_opened", "probes", "unmanaged")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c = {k: 0 for k in self.KEYS}
        self._by_reason: dict[str, int] = {}

    def incr(self, key: str, reason: Optional[str] = None) -> None:
        with self._lock:
            self._c[key] += 1
            if key == "fallbacks" and reason:
                self._by_reason[reason] = self._by_reason.get(reason, 0) + 1

    def snapshot(self) -> dict:
        with self._lock:
            out = dict(self._c)
            out["fallbacks_by_reason"] = dict(self._by_reason)
            return out

    def reset(self) -> None:
        with self._lock:
            self._c = {k: 0 for k in self.KEYS}
            self._by_reason = {}


#: Process-wide totals over every client (what `tollgate_client.stats()` shows).
GLOBAL_STATS = Stats()


# -- circuit breaker ----------------------------------------------------------

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    """Closed: every managed request tries the gateway. After `threshold`
    consecutive gateway faults it opens: requests go direct for `cooldown`
    seconds without trying. Then it is half-open: exactly one request (the
    probe) tries the gateway while the others keep going direct; the probe's
    success closes it, its failure re-opens it for another cool-down. Nothing
    ever disables the gateway for good."""

    def __init__(self, config: Config) -> None:
        self._threshold = config.breaker_threshold
        self._cooldown = config.breaker_cooldown
        self._clock = config.clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False

    @property
    def state(self) -> str:
        with self._lock:
            self._tick()
            return self._state

    def _tick(self) -> None:
        if self._state == OPEN and self._clock() - self._opened_at >= self._cooldown:
            self._state = HALF_OPEN
            self._probe_out = False

    def acquire(self) -> Optional[str]:
        """None: go direct without trying. Otherwise "normal" or "probe"."""
        with self._lock:
            self._tick()
            if self._state == CLOSED:
                return "normal"
            if self._state == HALF_OPEN and not self._probe_out:
                self._probe_out = True
                return "probe"
            return None

    def success(self) -> None:
        with self._lock:
            self._state = CLOSED
            self._failures = 0
            self._probe_out = False

    def failure(self) -> bool:
        """Records a gateway fault; True when this opened the breaker."""
        with self._lock:
            self._failures += 1
            if self._state == HALF_OPEN or (self._state == CLOSED and self._failures >= self._threshold):
                self._state = OPEN
                self._opened_at = self._clock()
                self._probe_out = False
                return True
            return False

    def release_probe(self) -> None:
        """The probe ended without telling anything about the gateway (e.g. a read timeout)."""
        with self._lock:
            self._probe_out = False

    def trip(self) -> None:
        """Open now (a failed start-up health check): direct until the next probe."""
        with self._lock:
            self._state = OPEN
            self._opened_at = self._clock()
            self._probe_out = False


class Core:
    """Shared by every adapter/transport built from one Config: the breaker
    state and the counters are per Core (and summed in GLOBAL_STATS)."""

    def __init__(self, config: Optional[Config] = None) -> None:
        self.config = config if config is not None else Config.from_env()
        self.breaker = Breaker(self.config)
        self.stats = Stats()

    def count(self, key: str, reason: Optional[str] = None) -> None:
        self.stats.incr(key, reason)
        GLOBAL_STATS.incr(key, reason)

    def record_fault(self) -> None:
        if self.breaker.failure():
            self.count("breaker_opened")
            log.warning(
                "tollgate_client breaker opened: event=breaker_open cooldown_s=%s",
                self.config.breaker_cooldown,
                extra={"tollgate.event": "breaker_open",
                       "tollgate.cooldown_s": self.config.breaker_cooldown},
            )

    def fallback(self, method: str, url: str, reason: str, code: Optional[str] = None,
                 error: Optional[str] = None) -> None:
        key = reason if code is None else f"{reason}:{code}"
        self.count("fallbacks", key)
        log.warning(
            "tollgate_client fallback: event=fallback reason=%s code=%s method=%s url=%s breaker=%s error=%s",
            reason, code or "-", method, _redact(url), self.breaker.state, error or "-",
            extra={"tollgate.event": "fallback", "tollgate.reason": reason,
                   "tollgate.code": code, "tollgate.method": method, "tollgate.url": _redact(url),
                   "tollgate.breaker": self.breaker.state, "tollgate.error": error},
        )

    def not_resent(self, method: str, url: str, reason: str, error: str) -> None:
        self.count("not_resent")
        log.error(
            "tollgate_client not re-sent: event=not_resent reason=%s method=%s url=%s error=%s",
            reason, method, _redact(url), error,
            extra={"tollgate.event": "not_resent", "tollgate.reason": reason,
                   "tollgate.method": method, "tollgate.url": _redact(url), "tollgate.error": error},
        )


def _redact(url: str) -> str:
    """Scheme, host and path only: query strings and userinfo may carry secrets."""
    from urllib.parse import urlsplit

    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return f"{p.scheme}://{host}{p.path}"


def health_check(core: Core) -> bool:
    """Start-up check: can a TCP connection to the gateway be opened? On failure
    the breaker opens (requests go direct for one cool-down, then a probe tries
    the gateway again) — a failed check never disables the gateway for good."""
    import socket
    from urllib.parse import urlsplit

    if not core.config.enabled:
        return False
    p = urlsplit(core.config.gateway_url or "")
    port = p.port or (443 if p.scheme == "https" else 80)
    try:
        with socket.create_connection((p.hostname, port), timeout=core.config.connect_timeout):
            pass
    except OSError as e:
        core.breaker.trip()
        core.count("breaker_opened")
        log.warning(
            "tollgate_client health check failed: event=health_check_failed gateway=%s error=%s",
            core.config.gateway_url, e,
            extra={"tollgate.event": "health_check_failed",
                   "tollgate.gateway": core.config.gateway_url, "tollgate.error": str(e)},
        )
        return False
    return True


def exception_chain(e: BaseException):
    """The exception, its causes/contexts and exceptions nested in args (urllib3
    wraps the interesting one in MaxRetryError.reason / ProxyError args)."""
    seen: set[int] = set()
    todo = [e]
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        todo.extend([x.__cause__, x.__context__, getattr(x, "reason", None)])
        todo.extend(a for a in getattr(x, "args", ()) if isinstance(a, BaseException))
