"""Fixtures for the client-library suite: the real `tollgate` binary (from
$TOLLGATE_BIN) on a fixed loopback port so it can be killed and started again
at the same address, real loopback upstreams, and one client wrapper per
library flavour (requests, httpx sync, httpx async).

The package is imported from the source tree (no install needed) and the
end-to-end suite's helpers (tests/python) are reused for configs and servers."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(HERE.parent))            # tollgate_client
sys.path.insert(0, str(REPO / "tests" / "python"))  # helpers, servers

from helpers import TOLLGATE_BIN  # noqa: E402
from servers import make_test_ca, tls_server_context  # noqa: E402

import tollgate_client  # noqa: E402
from support import FakeClock, FixedGateway, QuietEchoServer, free_port  # noqa: E402

# Only proxies a test sets explicitly may be used.
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
             "http_proxy", "https_proxy", "all_proxy", "no_proxy"):
    os.environ.pop(_var, None)
for _var in [k for k in os.environ if k.startswith("TOLLGATE_") and k != "TOLLGATE_BIN"]:
    os.environ.pop(_var, None)


def pytest_sessionstart(session):
    if not (os.path.isfile(TOLLGATE_BIN) and os.access(TOLLGATE_BIN, os.X_OK)):
        raise pytest.UsageError(
            f"tollgate binary not found at {TOLLGATE_BIN}: run `cargo build -p tollgate` "
            "or set TOLLGATE_BIN")


@pytest.fixture(autouse=True)
def _fresh_stats():
    tollgate_client.reset_stats()
    yield


@pytest.fixture
def upstream():
    srv = QuietEchoServer("plain").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def tls_upstream(certs):
    srv = QuietEchoServer("tls", ssl_ctx=tls_server_context(certs)).start()
    yield srv
    srv.stop()


@pytest.fixture
def gateway(tmp_path):
    """Factory: `gateway(config)` starts tollgate on a fixed free port; the
    returned FixedGateway can be killed and `.start()`ed again on that port."""
    started: list[FixedGateway] = []

    def make(config, port=None, env=None) -> FixedGateway:
        gw = FixedGateway(tmp_path / f"gw{len(started) + 1}", config, port or free_port(), env=env)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.kill()


@pytest.fixture
def clock():
    return FakeClock()
