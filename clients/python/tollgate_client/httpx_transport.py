"""`httpx` integration: a sync and an async transport that send managed hosts
through Tollgate (route or proxy mode) and fall back to a direct call only
when the gateway provably did not forward the request (see core.py).

Request bodies to managed hosts are buffered in memory before the first
attempt so that a permitted fallback can send the same bytes again."""

from __future__ import annotations

import ssl
from typing import Optional

import httpx

from . import core as c
from .config import ROUTE, Config


def classify(e: BaseException) -> tuple[str, str]:
    chain = list(c.exception_chain(e))
    if any(isinstance(x, ssl.SSLError) for x in chain):
        return c.OTHER, "tls_error"
    if isinstance(e, httpx.ProxyError):
        return c.TUNNEL_REFUSED, "tunnel_refused"
    if isinstance(e, httpx.ConnectTimeout):
        return c.NOT_SENT, "connect_timeout"
    if isinstance(e, httpx.ConnectError):
        return c.NOT_SENT, "gateway_unreachable"
    if isinstance(e, (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)):
        return c.TIMEOUT, "read_timeout"
    if isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return c.MAYBE_SENT, "connection_lost"
    return c.OTHER, type(e).__name__


class _Base:
    def __init__(self, config: Optional[Config], core: Optional[c.Core]) -> None:
        self.core = core if core is not None else c.Core(config)

    def _managed(self, request: httpx.Request) -> bool:
        cfg = self.core.config
        url = request.url
        managed = cfg.managed(url.scheme, url.host, url.port)
        if not managed and cfg.enabled:
            self.core.count("unmanaged")
        return managed

    def _gateway_request(self, request: httpx.Request) -> httpx.Request:
        """Route mode: the same request addressed to `<gateway>/<route>/...`;
        proxy mode: the request unchanged (the proxy transport carries it)."""
        cfg = self.core.config
        ext = dict(request.extensions)
        timeout = dict(ext.get("timeout") or {})
        connect = timeout.get("connect")
        timeout["connect"] = cfg.connect_timeout if connect is None else min(connect, cfg.connect_timeout)
        ext["timeout"] = timeout
        if cfg.mode != ROUTE:
            return httpx.Request(request.method, request.url, headers=request.headers,
                                 content=request.content, extensions=ext)
        url = request.url
        target = url.raw_path.decode("ascii")
        gw_url = cfg.route_url(url.scheme, url.host, url.port, target)
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"host"]
        headers += [(k.encode(), v.encode()) for k, v in cfg.gateway_headers.items()]
        return httpx.Request(request.method, gw_url, headers=headers, content=request.content,
                             extensions=ext)

    def _proxy(self, kw: dict):
        cfg = self.core.config
        if cfg.mode == ROUTE or not cfg.enabled:
            return kw
        # Gateway headers ride on the proxy hop (CONNECT for https) only.
        return dict(kw, proxy=httpx.Proxy(cfg.gateway_url or "", headers=dict(cfg.gateway_headers)))

    # The decision steps shared by sync and async; each returns what to do next.
    def _before(self, request):
        slot = self.core.breaker.acquire()
        if slot is None:
            self.core.fallback(request.method, str(request.url), "breaker_open")
        elif slot == "probe":
            self.core.count("probes")
        return slot

    def _on_error(self, request, e, slot) -> bool:
        kind, detail = classify(e)
        idempotent = c.is_idempotent(request.method, request.headers)
        d = c.decide_on_error(kind, detail, idempotent, True)
        if d.gateway_fault:
            self.core.record_fault()
        elif slot == "probe":
            self.core.breaker.release_probe()
        if d.fallback:
            self.core.fallback(request.method, str(request.url), detail, error=str(e) or type(e).__name__)
            return True
        if kind == c.MAYBE_SENT:
            self.core.not_resent(request.method, str(request.url), detail, str(e) or type(e).__name__)
        return False

    def _on_response(self, request, resp) -> bool:
        code = resp.headers.get("tollgate-error")
        idempotent = c.is_idempotent(request.method, request.headers)
        d = c.decide_on_response(code, idempotent, True)
        if d.gateway_fault:
            self.core.record_fault()
            if d.fallback:
                self.core.fallback(request.method, str(request.url), d.reason, code=code)
                return True
            self.core.not_resent(request.method, str(request.url), f"gateway_error:{code}", "returned as is")
            return False
        self.core.breaker.success()
        self.core.count("via_gateway")
        return False


class TollgateTransport(_Base, httpx.BaseTransport):
    """`httpx.Client(transport=TollgateTransport(...))`. Keyword arguments
    (verify, cert, http2, limits, ...) go to both inner HTTPTransports."""

    def __init__(self, config: Optional[Config] = None, core: Optional[c.Core] = None, **kw) -> None:
        _Base.__init__(self, config, core)
        self._direct = httpx.HTTPTransport(**kw)
        self._gateway = httpx.HTTPTransport(**self._proxy(kw))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self._managed(request):
            return self._direct.handle_request(request)
        request.read()
        if not self.core.config.fallback:
            return self._gateway.handle_request(self._gateway_request(request))
        slot = self._before(request)
        if slot is None:
            return self._direct.handle_request(request)
        try:
            resp = self._gateway.handle_request(self._gateway_request(request))
        except httpx.TransportError as e:
            if self._on_error(request, e, slot):
                return self._direct.handle_request(request)
            raise
        if self._on_response(request, resp):
            resp.close()
            return self._direct.handle_request(request)
        return resp

    def close(self) -> None:
        self._gateway.close()
        self._direct.close()


class AsyncTollgateTransport(_Base, httpx.AsyncBaseTransport):
    """`httpx.AsyncClient(transport=AsyncTollgateTransport(...))`."""

    def __init__(self, config: Optional[Config] = None, core: Optional[c.Core] = None, **kw) -> None:
        _Base.__init__(self, config, core)
        self._direct = httpx.AsyncHTTPTransport(**kw)
        self._gateway = httpx.AsyncHTTPTransport(**self._proxy(kw))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self._managed(request):
            return await self._direct.handle_async_request(request)
        await request.aread()
        if not self.core.config.fallback:
            return await self._gateway.handle_async_request(self._gateway_request(request))
        slot = self._before(request)
        if slot is None:
            return await self._direct.handle_async_request(request)
        try:
            resp = await self._gateway.handle_async_request(self._gateway_request(request))
        except httpx.TransportError as e:
            if self._on_error(request, e, slot):
                return await self._direct.handle_async_request(request)
            raise
        if self._on_response(request, resp):
            await resp.aclose()
            return await self._direct.handle_async_request(request)
        return resp

    async def aclose(self) -> None:
        await self._gateway.aclose()
        await self._direct.aclose()


def client(config: Optional[Config] = None, core: Optional[c.Core] = None,
           transport_kw: Optional[dict] = None, **client_kw) -> httpx.Client:
    """An httpx.Client whose transport is a TollgateTransport."""
    return httpx.Client(transport=TollgateTransport(config, core, **(transport_kw or {})), **client_kw)


def async_client(config: Optional[Config] = None, core: Optional[c.Core] = None,
                 transport_kw: Optional[dict] = None, **client_kw) -> httpx.AsyncClient:
    """An httpx.AsyncClient whose transport is an AsyncTollgateTransport."""
    return httpx.AsyncClient(transport=AsyncTollgateTransport(config, core, **(transport_kw or {})),
                             **client_kw)
