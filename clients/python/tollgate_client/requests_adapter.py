"""`requests` integration: an HTTPAdapter that sends managed hosts through
Tollgate (route or proxy mode) and falls back to a direct call only when the
gateway provably did not forward the request (see core.py)."""

from __future__ import annotations

import ssl
from typing import Optional
from urllib.parse import urlsplit

import requests
import urllib3.exceptions as ue
from requests.adapters import HTTPAdapter

from . import core as c
from .config import ROUTE, Config


def classify(e: BaseException) -> tuple[str, str]:
    chain = list(c.exception_chain(e))
    if any(isinstance(x, (ssl.SSLError, ue.SSLError, requests.exceptions.SSLError)) for x in chain):
        return c.OTHER, "tls_error"
    if any(isinstance(x, ue.NewConnectionError) for x in chain):
        return c.NOT_SENT, "gateway_unreachable"
    if any(isinstance(x, (ue.ConnectTimeoutError, requests.exceptions.ConnectTimeout)) for x in chain):
        return c.NOT_SENT, "connect_timeout"
    if any(isinstance(x, OSError) and "Tunnel connection failed" in str(x) for x in chain):
        return c.TUNNEL_REFUSED, "tunnel_refused"
    if any(isinstance(x, (ue.ReadTimeoutError, requests.exceptions.ReadTimeout)) for x in chain):
        return c.TIMEOUT, "read_timeout"
    if isinstance(e, requests.exceptions.ConnectionError):
        return c.MAYBE_SENT, "connection_lost"
    return c.OTHER, type(e).__name__


def _gateway_timeout(timeout, cap: float):
    """The caller's (connect, read) timeout with the connect part capped, so a
    black-holed gateway costs at most `connect_timeout` before going direct."""
    if isinstance(timeout, tuple):
        connect, read = timeout
    else:
        connect = read = timeout
    connect = cap if connect is None else min(connect, cap)
    return (connect, read)


class TollgateAdapter(HTTPAdapter):
    """Mount on a Session for "http://" and "https://" (or use `session()`)."""

    def __init__(self, config: Optional[Config] = None, core: Optional[c.Core] = None, **kw) -> None:
        self.core = core if core is not None else c.Core(config)
        super().__init__(**kw)

    # Headers for the gateway travel on the proxy hop only (the CONNECT request
    # for https), never inside the tunnel to the provider.
    def proxy_headers(self, proxy):
        headers = super().proxy_headers(proxy)
        cfg = self.core.config
        if cfg.gateway_url and proxy.rstrip("/") == cfg.gateway_url:
            headers.update(cfg.gateway_headers)
        return headers

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        cfg = self.core.config
        parts = urlsplit(request.url)
        if not cfg.managed(parts.scheme, parts.hostname or "", parts.port):
            if cfg.enabled:
                self.core.count("unmanaged")
            return super().send(request, stream, timeout, verify, cert, proxies)

        method = request.method or "GET"
        direct_proxies = {k: v for k, v in (proxies or {}).items()
                          if v and v.rstrip("/") != cfg.gateway_url}

        def direct():
            return super(TollgateAdapter, self).send(request, stream, timeout, verify, cert,
                                                     direct_proxies)

        if not cfg.fallback:
            return self._via_gateway(request, parts, stream, timeout, verify, cert)

        slot = self.core.breaker.acquire()
        if slot is None:
            self.core.fallback(method, request.url, "breaker_open")
            return direct()
        if slot == "probe":
            self.core.count("probes")

        idempotent = c.is_idempotent(method, request.headers)
        replayable = request.body is None or isinstance(request.body, (bytes, str))
        try:
            resp = self._via_gateway(request, parts, stream, timeout, verify, cert)
        except Exception as e:
            kind, detail = classify(e)
            # A never-started body (refused/timed-out connect) is intact, whatever its type.
            d = c.decide_on_error(kind, detail, idempotent, replayable or kind == c.NOT_SENT)
            if d.gateway_fault:
                self.core.record_fault()
            elif slot == "probe":
                self.core.breaker.release_probe()
            if d.fallback:
                self.core.fallback(method, request.url, detail, error=str(e))
                return direct()
            if kind == c.MAYBE_SENT:
                self.core.not_resent(method, request.url, detail, str(e))
            raise

        code = resp.headers.get("tollgate-error")
        d = c.decide_on_response(code, idempotent, replayable)
        if d.gateway_fault:
            self.core.record_fault()
            if d.fallback:
                resp.close()
                self.core.fallback(method, request.url, d.reason, code=code)
                return direct()
            self.core.not_resent(method, request.url, f"gateway_error:{code}", "returned as is")
            return resp
        self.core.breaker.success()
        self.core.count("via_gateway")
        return resp

    def _via_gateway(self, request, parts, stream, timeout, verify, cert):
        cfg = self.core.config
        gw_timeout = _gateway_timeout(timeout, cfg.connect_timeout)
        if cfg.mode == ROUTE:
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            gw = request.copy()
            gw.url = cfg.route_url(parts.scheme, parts.hostname or "", parts.port, target)
            for k, v in cfg.gateway_headers.items():
                gw.headers[k] = v
            resp = super().send(gw, stream, gw_timeout, verify, cert, {})
            # The caller sees the URL it asked for, so relative redirects resolve
            # against the provider's URL (and come back through this adapter).
            resp.url = request.url
            resp.request = request
            return resp
        proxy = {"http": cfg.gateway_url, "https": cfg.gateway_url}
        return super().send(request, stream, gw_timeout, verify, cert, proxy)


def session(config: Optional[Config] = None, core: Optional[c.Core] = None, **adapter_kw) -> requests.Session:
    """A requests.Session with a TollgateAdapter mounted for http and https."""
    s = requests.Session()
    adapter = TollgateAdapter(config=config, core=core, **adapter_kw)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s
