"""Fixtures for the end-to-end suite: loopback upstreams (plain, TLS), a test
CA, a crafted-answer DNS server, and a factory that starts `tollgate run`
processes and always kills them at teardown."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import TOLLGATE_BIN, Gateway
from servers import DnsServer, EchoServer, make_test_ca, tls_server_context

# Clients must only use the proxies a test sets explicitly: a proxy or NO_PROXY
# inherited from the machine would silently change what is being tested.
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
             "http_proxy", "https_proxy", "all_proxy", "no_proxy"):
    os.environ.pop(_var, None)
# Secrets used by configs must not come from the outer environment either.
os.environ.pop("TOLLGATE_CONFIG", None)
os.environ.pop("TOLLGATE_LOG", None)


def pytest_sessionstart(session):
    if not (os.path.isfile(TOLLGATE_BIN) and os.access(TOLLGATE_BIN, os.X_OK)):
        raise pytest.UsageError(
            f"tollgate binary not found at {TOLLGATE_BIN}: run `cargo build -p tollgate` "
            "or set TOLLGATE_BIN")


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def upstream():
    srv = EchoServer("plain").start()
    yield srv
    srv.stop()


@pytest.fixture
def sentinel():
    """A second upstream that must never receive traffic in the test using it."""
    srv = EchoServer("sentinel").start()
    yield srv
    srv.stop()


@pytest.fixture
def tls_upstream(certs):
    srv = EchoServer("tls", ssl_ctx=tls_server_context(certs)).start()
    yield srv
    srv.stop()


@pytest.fixture
def dns_server():
    servers = []

    def make(records):
        srv = DnsServer(records).start()
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def gateway(tmp_path):
    """Factory: `gateway(config_dict_or_yaml, env={...})` starts a gateway."""
    started: list[Gateway] = []
    counter = [0]

    def make(config, env=None, **kw) -> Gateway:
        counter[0] += 1
        gw = Gateway(tmp_path / f"gw{counter[0]}", config, env=env, **kw)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.kill()


@pytest.fixture
def run_cli():
    """Runs a tollgate subcommand with a deadline; returns CompletedProcess."""
    def run(*args, env=None, timeout=20):
        full_env = dict(os.environ)
        full_env.update(env or {})
        return subprocess.run([TOLLGATE_BIN, *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)
    return run


@pytest.fixture
def workdir(tmp_path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d
