"""Configuration: where the gateway is, which hosts go through it and how,
and how eagerly to fall back. Built in code (`Config(...)`) or from the
environment (`Config.from_env()`); see README.md for every variable."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional
from urllib.parse import urlsplit

ROUTE = "route"
PROXY = "proxy"

_TRUE = {"1", "on", "true", "yes"}
_FALSE = {"0", "off", "false", "no"}


class ConfigError(ValueError):
    """A configuration value (argument or environment variable) is invalid."""


def _parse_bool(name: str, raw: str) -> bool:
    v = raw.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{name}: expected on|off, got {raw!r}")


def _parse_float(name: str, raw: str, minimum: float) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if v < minimum:
        raise ConfigError(f"{name}: must be >= {minimum}, got {raw!r}")
    return v


def _parse_pairs(name: str, raw: str) -> dict[str, str]:
    """`a=b,c=d` -> {a: b, c: d}; blanks ignored."""
    out: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{name}: expected key=value items separated by commas, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _norm_host(h: str) -> str:
    return h.strip().lower().rstrip(".")


@dataclass
class Config:
    """How requests are sent through Tollgate.

    gateway_url   Tollgate's proxy listener, e.g. ``http://127.0.0.1:8080``.
    mode          ``"proxy"`` (forward proxy / CONNECT) or ``"route"`` (``<gateway>/<route>/...``).
    hosts         proxy mode: hosts sent through the gateway (``host`` or ``host:port``; ``*`` = all).
    routes        route mode: host (or ``host:port``) -> route prefix, e.g. ``{"api.github.com": "/github"}``.
    fallback      go direct when the gateway is unavailable (default on). Off: gateway errors surface.
    connect_timeout    seconds to wait for a TCP connection to the gateway before going direct.
    breaker_threshold  consecutive gateway faults that open the breaker (go direct without trying).
    breaker_cooldown   seconds the breaker stays open before one probe request tries the gateway.
    gateway_headers    headers added only to requests sent to the gateway (e.g. a consumer key);
                       never sent on a direct call.
    clock         monotonic clock, replaceable in tests.
    """

    gateway_url: Optional[str] = None
    mode: str = PROXY
    hosts: tuple[str, ...] = ()
    routes: Mapping[str, str] = field(default_factory=dict)
    fallback: bool = True
    connect_timeout: float = 2.0
    breaker_threshold: int = 3
    breaker_cooldown: float = 30.0
    gateway_headers: Mapping[str, str] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.mode not in (ROUTE, PROXY):
            raise ConfigError(f"mode: expected 'route' or 'proxy', got {self.mode!r}")
        if self.gateway_url is not None:
            parts = urlsplit(self.gateway_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"gateway_url: expected http://host:port, got {self.gateway_url!r}")
            self.gateway_url = self.gateway_url.rstrip("/")
        self.hosts = tuple(_norm_host(h) for h in self.hosts if h.strip())
        routes = {}
        for host, route in dict(self.routes).items():
            route = "/" + route.strip().strip("/")
            if route == "/":
                raise ConfigError(f"routes[{host!r}]: the route must not be empty")
            routes[_norm_host(host)] = route
        self.routes = routes
        if self.mode == ROUTE and self.gateway_url is not None and not self.routes:
            raise ConfigError("routes: route mode needs at least one host=route mapping")
        if self.breaker_threshold < 1:
            raise ConfigError("breaker_threshold: must be >= 1")
        if self.connect_timeout <= 0:
            raise ConfigError("connect_timeout: must be > 0")
        if self.breaker_cooldown < 0:
            raise ConfigError("breaker_cooldown: must be >= 0")

    @property
    def enabled(self) -> bool:
        """No gateway URL means every request goes direct (and nothing is counted as a fallback)."""
        return self.gateway_url is not None

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None, **overrides) -> "Config":
        """Reads the TOLLGATE_* variables; keyword arguments win over the environment."""
        env = os.environ if env is None else env
        kw: dict = {}
        if env.get("TOLLGATE_URL"):
            kw["gateway_url"] = env["TOLLGATE_URL"]
        if env.get("TOLLGATE_MODE"):
            kw["mode"] = env["TOLLGATE_MODE"].strip().lower()
        if env.get("TOLLGATE_HOSTS"):
            kw["hosts"] = tuple(h for h in env["TOLLGATE_HOSTS"].split(",") if h.strip())
        if env.get("TOLLGATE_ROUTES"):
            kw["routes"] = _parse_pairs("TOLLGATE_ROUTES", env["TOLLGATE_ROUTES"])
        if env.get("TOLLGATE_FALLBACK"):
            kw["fallback"] = _parse_bool("TOLLGATE_FALLBACK", env["TOLLGATE_FALLBACK"])
        if env.get("TOLLGATE_CONNECT_TIMEOUT"):
            kw["connect_timeout"] = _parse_float("TOLLGATE_CONNECT_TIMEOUT",
                                                 env["TOLLGATE_CONNECT_TIMEOUT"], 0.001)
        if env.get("TOLLGATE_BREAKER_THRESHOLD"):
            raw = env["TOLLGATE_BREAKER_THRESHOLD"]
            try:
                kw["breaker_threshold"] = int(raw)
            except ValueError:
                raise ConfigError(f"TOLLGATE_BREAKER_THRESHOLD: expected an integer, got {raw!r}") from None
        if env.get("TOLLGATE_BREAKER_COOLDOWN"):
            kw["breaker_cooldown"] = _parse_float("TOLLGATE_BREAKER_COOLDOWN",
                                                  env["TOLLGATE_BREAKER_COOLDOWN"], 0.0)
        if env.get("TOLLGATE_HEADERS"):
            kw["gateway_headers"] = _parse_pairs("TOLLGATE_HEADERS", env["TOLLGATE_HEADERS"])
        kw.update(overrides)
        return cls(**kw)

    # -- host selection ---------------------------------------------------
    def _lookup(self, table, host: str, port: Optional[int], default_port: int):
        host = _norm_host(host)
        keys = []
        if port is not None and port != default_port:
            keys.append(f"{host}:{port}")
        else:
            keys.extend([host, f"{host}:{default_port}"])
        for k in keys:
            if k in table:
                return k
        return None

    def route_for(self, scheme: str, host: str, port: Optional[int]) -> Optional[str]:
        """Route mode: the route prefix for this destination, or None if it is not managed."""
        key = self._lookup(self.routes, host, port, 443 if scheme == "https" else 80)
        return self.routes[key] if key is not None else None

    def proxied(self, scheme: str, host: str, port: Optional[int]) -> bool:
        """Proxy mode: whether this destination is sent through the gateway."""
        if "*" in self.hosts:
            return True
        return self._lookup(set(self.hosts), host, port, 443 if scheme == "https" else 80) is not None

    def managed(self, scheme: str, host: str, port: Optional[int]) -> bool:
        if not self.enabled or scheme not in ("http", "https"):
            return False
        if self.mode == ROUTE:
            return self.route_for(scheme, host, port) is not None
        return self.proxied(scheme, host, port)

    def route_url(self, scheme: str, host: str, port: Optional[int], target: str) -> str:
        """`<gateway>/<route><path?query>` for route mode; `target` starts with '/'."""
        route = self.route_for(scheme, host, port)
        if route is None or self.gateway_url is None:
            raise ConfigError(f"no route configured for {host!r}")
        if not target.startswith("/"):
            target = "/" + target
        return self.gateway_url + route + target
