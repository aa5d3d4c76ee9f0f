"""The web dashboards in a real headless browser (Debian `chromium` + `chromium-driver`,
driven with selenium): the control plane's `/ui/` (sign-in, fleet, traffic, audit, config
diff, rollout start/promote/rollback, role and group-scope rules) against a real
`tollgate control-plane` with a real managed gateway, and the gateway's local view on its
admin listener (status, limits, discovery panel, admin-token sign-in). Screenshots go to
target/test-artifacts/dashboard/ (build output, not committed)."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
import requests
import urllib3

from helpers import base_config, to_yaml, wait_until
from test_managed import RealControlPlane, RealManagedGateway, policy
from test_usage import db  # noqa: F401  (fixture: SQLite, or a throw-away PostgreSQL database)

try:
    from selenium import webdriver
    from selenium.common.exceptions import NoSuchElementException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - reported as a skip below
    webdriver = None

CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "target" / "test-artifacts" / "dashboard"

needs_browser = pytest.mark.skipif(
    webdriver is None or shutil.which("chromium") is None or not Path(CHROMEDRIVER).exists(),
    reason="needs selenium and Debian chromium + chromium-driver (apt-get install chromium chromium-driver)")

urllib3.disable_warnings()


@pytest.fixture
def browser(tmp_path):
    """Factory of headless Chromium sessions (each with its own profile, so cookies are not
    shared between the admin and the viewer); all quit at teardown."""
    drivers = []

    def make():
        opts = webdriver.ChromeOptions()
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                  # The control plane's certificate is self-signed (the gateways pin it).
                  "--ignore-certificate-errors",
                  f"--user-data-dir={tmp_path / f'chrome{len(drivers)}'}"):
            opts.add_argument(a)
        d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        d.set_page_load_timeout(20)
        drivers.append(d)
        return d

    yield make
    for d in drivers:
        d.quit()


def shot(d, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def css(d, sel):
    return d.find_elements(By.CSS_SELECTOR, sel)


def one(d, sel):
    return d.find_element(By.CSS_SELECTOR, sel)


def navigating(d, action) -> None:
    """Runs `action` (a click or a form submit) and waits until the next page has loaded."""
    # A marker on the current window object disappears when the next document replaces it.
    # (Polling the old <html> element for staleness races with Chromium's navigation: while the
    # old document is torn down, the driver can answer with a generic inspector error instead of
    # a stale-element one.)
    d.execute_script("window.__tgOldPage = true;")
    action()

    def loaded(drv) -> bool:
        try:
            return drv.execute_script(
                "return window.__tgOldPage !== true && document.readyState === 'complete';")
        except WebDriverException:
            return False  # between documents

    WebDriverWait(d, 10).until(loaded)


def click(d, sel: str) -> None:
    navigating(d, lambda: one(d, sel).click())


def sign_in(d, url: str, token: str) -> None:
    d.get(url)
    assert "/ui/login" in d.current_url
    one(d, "#token").send_keys(token)
    click(d, "#sign-in")


def submit(d, form_sel: str) -> None:
    """Submits a form the way a click does, minus the JS confirm() dialog."""
    navigating(d, lambda: d.execute_script("arguments[0].submit()", one(d, form_sel)))


def error_status(d) -> int | None:
    els = css(d, "#error")
    return int(els[0].get_attribute("data-status")) if els else None


def limited_policy(allowed_prefix: str) -> str:
    """`policy()` plus an hourly quota, so gateways report quota usage."""
    return to_yaml(base_config(default_action="deny", apis=[{
        "name": "echo", "hosts": ["127.0.0.1"],
        "allow": [{"methods": ["GET"], "paths": [f"{allowed_prefix}/**"]}],
        "limits": [{"name": "hourly", "requests": 100, "per": "1h"}],
    }]))


class UsageGateway(RealManagedGateway):
    """A managed gateway that uploads its usage every second (default: every minute)."""

    def command(self) -> list[str]:
        return super().command() + ["--usage-interval", "1"]


@needs_browser
def test_control_plane_dashboard(tmp_path, upstream, browser, db):
    real = RealControlPlane(tmp_path / "cp").start()
    gws = []
    try:
        for g in ("acme", "globex"):
            assert real.api("POST", "/v1/groups", json={"name": g, "labels": {"tier": "gold"}}).status_code == 201
        assert real.api("POST", "/v1/groups/acme/configs", data=limited_policy("/v1")).json()["version"] == 1
        assert real.api("POST", "/v1/groups/globex/configs", data=policy("/g")).json()["version"] == 1
        tok = real.api("POST", "/v1/groups/acme/enrollment-tokens").json()["token"]
        gw = UsageGateway(tmp_path / "g1", real, tmp_path / "state", token=tok)
        gws.append(gw)
        for _ in range(3):
            assert gw.get(f"{upstream.base}/v1/items/42").status_code == 200
        assert gw.get(f"{upstream.base}/v2/items").status_code == 403

        def reported(v):
            return any(g["applied_version"] == v and g["healthy"] for g in real.api("GET", "/v1/gateways").json())
        assert wait_until(lambda: reported(1), timeout=15)
        # v2 staged (published, not assigned) so it can go out as a canary rollout.
        r = real.api("POST", "/v1/groups/acme/configs?assign=false", data=limited_policy("/v2"))
        assert r.status_code == 201 and r.json()["version"] == 2, r.text
        viewer = real.api("POST", "/v1/operator-tokens",
                          json={"name": "globex-viewer", "role": "viewer", "group": "globex"})
        assert viewer.status_code == 201, viewer.text
        viewer_token = viewer.json()["token"]

        # --- admin ------------------------------------------------------------------------
        d = browser()
        d.get(real.url + "/ui/fleet")
        assert "/ui/login" in d.current_url, "pages need a session"
        one(d, "#token").send_keys("tgop_wrong")
        click(d, "#sign-in")
        assert "not a valid operator token" in one(d, ".notice").text
        one(d, "#token").send_keys(real.token)
        click(d, "#sign-in")
        assert d.current_url.endswith("/ui/fleet"), d.current_url
        cookie = next(c for c in d.get_cookies() if c["name"] == "tg_session")
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
        assert real.token not in cookie["value"]
        assert one(d, "#user-role").text == "admin"
        rows = css(d, "table.fleet[data-group=acme] tr.gateway")
        assert len(rows) == 1 and "site-1" in rows[0].text
        assert one(d, "table.fleet[data-group=acme] td.applied").text == "v1"
        assert "healthy" in rows[0].text and "in sync" in rows[0].text
        assert css(d, "#group-globex"), "every group is listed"
        shot(d, "fleet-admin")

        # Traffic: charts from the fleet's usage when this control plane stores it, else a
        # clear empty state (never a broken page).
        d.get(real.url + "/ui/traffic?group=acme")
        assert error_status(d) is None
        def charted_requests() -> int:
            """Sum of the request markers' values (tooltips read "HH:MM · requests: N")."""
            tips = [e.get_attribute("textContent") for e in css(d, "#requests-chart circle.pt title")]
            return sum(int(t.rsplit(": ", 1)[1]) for t in tips if " · requests: " in t)

        def charted():
            d.refresh()
            return charted_requests() == 4
        assert wait_until(charted, timeout=20, interval=1), one(d, "main").text
        # The 4 calls (3 allowed, 1 denied) fall in one or two minutes: a marker per minute with
        # requests, none for errors or 429s (zeros are the line only), p50/p90/p99 per minute.
        minutes = len(css(d, "#requests-chart circle.pt"))
        assert minutes in (1, 2) and css(d, "#requests-chart polyline.line")
        # (a percentile of exactly 0 ms would be drawn without a marker)
        assert 0 < len(css(d, "#latency-chart circle.pt")) <= 3 * minutes
        assert one(d, ".stats .stat .value").text == "4"
        assert "echo" in one(d, "#top-apis").text and css(d, "#apis-chart g.row")
        assert "/v1/items/{id}" in one(d, "#top-endpoints").text
        # Quota usage: the echo API's hourly limit, 3 of 100 used (the denied call is
        # refused before admission and uses nothing).
        def quota_shown():
            d.refresh()
            used = css(d, "#quota-table tr[data-limit='echo/hourly'] td.used")
            return bool(used) and used[0].text == "3"
        assert wait_until(quota_shown, timeout=20, interval=1), one(d, "#quota").text
        assert "3 %" in one(d, "#quota-table tr[data-limit='echo/hourly'] .meter").text
        assert one(d, "#compare-table tr[data-group=acme]")
        assert not css(d, "#compare-table tr[data-group=globex]"), "globex sent nothing"
        shot(d, "traffic-admin")

        # Config: the diff between v1 and v2 shows exactly the changed allow rule.
        d.get(real.url + "/ui/config/acme?from=1&to=2")
        dels = [e.text for e in css(d, "table.diff tr.del td.code")]
        adds = [e.text for e in css(d, "table.diff tr.add td.code")]
        assert any("/v1/**" in t for t in dels) and any("/v2/**" in t for t in adds), (dels, adds)
        assert not any("/v2/**" in t for t in dels)
        assert one(d, "#diff-adds").text == f"+{len(adds)}"
        assert one(d, "#rollout-state").get_attribute("data-state") == "none"
        shot(d, "config-diff")
        d.get(real.url + "/ui/config/acme?view=2")
        assert '"/v2/**"' in one(d, "#yaml pre").text

        # Start a canary rollout of v2 (100 % of the one gateway), then promote it.
        one(d, "#canary-percent").clear()
        one(d, "#canary-percent").send_keys("100")
        submit(d, "#start-form")
        assert "done=started" in d.current_url
        assert one(d, "#rollout-state").get_attribute("data-state") == "canary"
        assert css(d, "#promote") and css(d, "#rollback")
        assert wait_until(lambda: gw.get(f"{upstream.base}/v2/items").status_code == 200, timeout=15)
        shot(d, "config-canary")
        submit(d, "#rollout-actions form[action$='/promote']")
        assert "done=promoted" in d.current_url
        assert one(d, "#rollout-state").get_attribute("data-state") == "promoted"
        assert one(d, "#group-version").text == "v2"
        assert real.api("GET", "/v1/groups/acme/rollout").json()["group_version"] == 2

        # v3 as a canary, then rolled back: the old config comes back as a new version (v4).
        assert real.api("POST", "/v1/groups/acme/configs?assign=false", data=policy("/v3")).json()["version"] == 3
        d.get(real.url + "/ui/config/acme")
        assert one(d, "#start-form select[name=version]").get_attribute("value") == "3"
        one(d, "#canary-percent").clear()
        one(d, "#canary-percent").send_keys("100")
        submit(d, "#start-form")
        assert one(d, "#rollout-state").get_attribute("data-state") == "canary"
        assert wait_until(lambda: gw.get(f"{upstream.base}/v3/items").status_code == 200, timeout=15)
        submit(d, "#rollout-actions form[action$='/rollback']")
        assert "done=rolled_back" in d.current_url
        assert one(d, "#rollout-state").get_attribute("data-state") == "rolled_back"
        assert one(d, "#group-version").text == "v4"
        assert wait_until(lambda: gw.get(f"{upstream.base}/v3/items").status_code == 403, timeout=15)
        assert gw.get(f"{upstream.base}/v2/items").status_code == 200
        shot(d, "config-rolled-back")

        # Audit lists the changes made through the dashboard, with who made them.
        d.get(real.url + "/ui/audit")
        actions = [r.get_attribute("data-action") for r in css(d, "#changes tbody tr")]
        for a in ("rollout.start", "rollout.promote", "rollout.rollback"):
            assert a in actions, actions
        assert "admin" in one(d, "#changes tr[data-action='rollout.promote']").text
        # The denied call (/v2/items under v1) came back from the gateway as an audit event.
        assert "endpoint_not_allowed" in one(d, "#denials-table").text
        shot(d, "audit-admin")

        # A POST without the session's CSRF token is refused, even with the session cookie.
        jar = {"tg_session": cookie["value"]}
        r = requests.post(real.url + "/ui/config/acme/promote", data={"csrf": "forged"},
                          cookies=jar, verify=False, allow_redirects=False, timeout=10)
        assert r.status_code == 403
        # Sign out: the page goes back to the sign-in form.
        click(d, "#logout")
        assert "/ui/login" in d.current_url
        d.get(real.url + "/ui/fleet")
        assert "/ui/login" in d.current_url

        # --- viewer scoped to globex --------------------------------------------------------
        v = browser()
        sign_in(v, real.url + "/ui/fleet", viewer_token)
        assert one(v, "#user-role").text == "viewer · globex"
        page = one(v, "main").text
        assert "globex" in page and "acme" not in page and "site-1" not in page
        assert not css(v, "#group-acme")
        shot(v, "fleet-viewer")
        v.get(real.url + "/ui/config/globex")
        assert error_status(v) is None
        assert not css(v, "#rollout-actions") and not css(v, "#promote") and not css(v, "#start-form")
        csrf = one(v, "input[name=csrf]").get_attribute("value")
        shot(v, "config-viewer")
        for path in ("/ui/config/acme", "/ui/traffic?group=acme", "/ui/audit?group=acme",
                     "/ui/fleet?group=acme"):
            v.get(real.url + path)
            assert error_status(v) == 403, path
            assert "site-1" not in v.page_source
        shot(v, "viewer-forbidden")
        v.get(real.url + "/ui/audit")
        targets = " ".join(r.text for r in css(v, "#changes tbody tr"))
        assert "globex" in targets and "acme" not in targets
        v.get(real.url + "/ui/traffic")
        assert "acme" not in one(v, "main").text
        # Even a well-formed POST (valid session and CSRF token) is refused for a viewer.
        vcookie = next(c for c in v.get_cookies() if c["name"] == "tg_session")["value"]
        r = requests.post(real.url + "/ui/config/globex/promote", data={"csrf": csrf},
                          cookies={"tg_session": vcookie}, verify=False, allow_redirects=False,
                          timeout=10)
        assert r.status_code == 403 and "viewer role" in r.text
        assert real.api("GET", "/v1/groups/globex/rollout").json()["group_version"] == 1

        # --- the gateway's own view ---------------------------------------------------------
        d.get(gw.admin_url + "/ui")
        assert one(d, "#config-version").text == "v4"
        assert "connected" in one(d, "#status").text
        assert "echo" in one(d, "#by-api").text
        shot(d, "gateway-overview")
        d.get(gw.admin_url + "/ui/discovery")
        patterns = [e.text for e in css(d, "section.host[data-host='127.0.0.1'] td.pattern")]
        assert "/v1/items/{id}" in patterns and "/v2/items" in patterns, patterns
        shot(d, "gateway-discovery")
    finally:
        for g in gws:
            g.kill()
        real.stop()


@needs_browser
def test_gateway_local_view_with_admin_token(gateway, upstream, browser):
    token = "admintok-ui-7f3a2c91"
    gw = gateway(base_config(
        admin={"token": "${env:TG_ADMIN_TOKEN}"},
        apis=[{"name": "echo", "hosts": ["127.0.0.1"],
               "limits": [{"name": "hourly", "requests": 50, "per": "1h"}]}]),
        env={"TG_ADMIN_TOKEN": token})
    for i in range(4):
        assert gw.get(f"{upstream.base}/users/{1000 + i}/orders").status_code == 200
    # The browser-facing pages are outside the bearer-token middleware but not open.
    r = requests.get(gw.admin_url + "/ui", allow_redirects=False, timeout=5)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    assert requests.get(gw.admin_url + "/admin/limits", timeout=5).status_code == 401

    d = browser()
    d.get(gw.admin_url + "/ui/discovery")
    assert "/ui/login" in d.current_url
    one(d, "#token").send_keys("wrong")
    click(d, "#sign-in")
    assert "not this gateway's admin token" in one(d, ".notice").text
    one(d, "#token").send_keys(token)
    click(d, "#sign-in")
    assert d.current_url.endswith("/ui/discovery"), d.current_url
    cookie = next(c for c in d.get_cookies() if c["name"] == "tg_admin_session")
    assert cookie["httpOnly"] and token not in cookie["value"]
    row = one(d, "section.host[data-host='127.0.0.1'] tr.endpoint")
    assert one(row, "td.pattern").text == "/users/{id}/orders"
    assert one(row, "td.count").text == "4"
    assert "2xx 4" in row.text
    assert css(d, "#hosts-chart g.row")
    shot(d, "gateway-discovery-token")
    d.get(gw.admin_url + "/ui/limits")
    used = [e.text for e in css(d, "section[data-api=echo] td.used")]
    assert used == ["4"], used
    shot(d, "gateway-limits")
    d.get(gw.admin_url + "/ui")
    assert one(d, "#config-version").text == "v1"
    assert "not managed" in one(d, "#status").text
    assert one(d, ".stats .stat:nth-child(2) .value").text == "4"

    # Requests per minute from the gateway's own counters: each page view is a sample, so a
    # request between two views (a second apart) shows up as a marker on the chart.
    def rate_charted():
        assert gw.get(f"{upstream.base}/users/7/orders").status_code == 200
        d.get(gw.admin_url + "/ui")
        tips = [e.get_attribute("textContent") for e in css(d, "#rate-chart circle.pt title")]
        return any(" · requests/min: " in t for t in tips)
    assert wait_until(rate_charted, timeout=15, interval=1), one(d, "#rate").text
    shot(d, "gateway-overview-token")
    # Assets are embedded and served with the page's strict CSP (no inline script or style).
    r = requests.get(gw.admin_url + "/ui/assets/ui.css", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    page = requests.get(gw.admin_url + "/ui", cookies={"tg_admin_session": cookie["value"]}, timeout=5)
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"<script>|style=", page.text)
    click(d, "#logout")
    d.get(gw.admin_url + "/ui")
    assert "/ui/login" in d.current_url


def test_dashboard_session_rules_over_http(tmp_path, db):
    """The session and role rules with a plain HTTP client (runs without a browser too): cookie
    flags, no token in the cookie, CSRF and origin checks, viewer and group-scope refusals."""
    real = RealControlPlane(tmp_path / "cp").start()
    try:
        for g in ("acme", "globex"):
            assert real.api("POST", "/v1/groups", json={"name": g, "labels": {}}).status_code == 201
        assert real.api("POST", "/v1/groups/acme/configs", data=policy("/v1")).status_code == 201
        assert real.api("POST", "/v1/groups/acme/configs?assign=false", data=policy("/v2")).status_code == 201
        viewer = real.api("POST", "/v1/operator-tokens",
                          json={"name": "acme-viewer", "role": "viewer", "group": "acme"}).json()["token"]

        def session(token):
            s = requests.Session()
            s.trust_env, s.verify = False, False
            r = s.post(real.url + "/ui/login", data={"token": token, "next": "/ui/config/acme"},
                       allow_redirects=False, timeout=10)
            assert r.status_code == 303 and r.headers["location"] == "/ui/config/acme", r.text
            set_cookie = r.headers["set-cookie"]
            for flag in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/ui"):
                assert flag in set_cookie
            assert token not in set_cookie
            return s

        anon = requests.get(real.url + "/ui/fleet", verify=False, allow_redirects=False, timeout=10)
        assert anon.status_code == 303 and anon.headers["location"] == "/ui/login?next=%2Fui%2Ffleet"
        bad = requests.post(real.url + "/ui/login", data={"token": "tgop_nope"}, verify=False, timeout=10)
        assert bad.status_code == 401
        # An open redirect is not followed after sign-in.
        r = requests.post(real.url + "/ui/login", data={"token": real.token, "next": "https://evil.example/"},
                          verify=False, allow_redirects=False, timeout=10)
        assert r.headers["location"] == "/ui/fleet"

        admin = session(real.token)
        page = admin.get(real.url + "/ui/config/acme", timeout=10)
        assert page.status_code == 200 and 'id="start-form"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text).group(1)
        start = {"csrf": csrf, "version": "2", "canary_percent": "50"}
        # Wrong CSRF token, or a foreign Origin: refused, nothing starts.
        assert admin.post(real.url + "/ui/config/acme/rollout", data={**start, "csrf": "0" * 64},
                          allow_redirects=False, timeout=10).status_code == 403
        assert admin.post(real.url + "/ui/config/acme/rollout", data=start, allow_redirects=False,
                          headers={"Origin": "https://evil.example"}, timeout=10).status_code == 403
        assert real.api("GET", "/v1/groups/acme/rollout").json()["rollout"] is None
        ok = admin.post(real.url + "/ui/config/acme/rollout", data=start, allow_redirects=False, timeout=10)
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/config/acme?done=started"
        ro = real.api("GET", "/v1/groups/acme/rollout").json()["rollout"]
        assert ro["state"] == "canary" and ro["version"] == 2 and ro["canary_percent"] == 50
        assert ro["started_by"] == "admin"

        v = session(viewer)
        page = v.get(real.url + "/ui/config/acme", timeout=10)
        assert page.status_code == 200 and 'id="promote"' not in page.text
        vcsrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text).group(1)
        r = v.post(real.url + "/ui/config/acme/promote", data={"csrf": vcsrf}, allow_redirects=False, timeout=10)
        assert r.status_code == 403
        assert real.api("GET", "/v1/groups/acme/rollout").json()["rollout"]["state"] == "canary"
        for path in ("/ui/config/globex", "/ui/traffic?group=globex", "/ui/audit?group=globex",
                     "/ui/fleet?group=globex"):
            r = v.get(real.url + path, allow_redirects=False, timeout=10)
            assert r.status_code == 403, path
        fleet = v.get(real.url + "/ui/fleet", timeout=10).text
        assert 'id="group-acme"' in fleet and "globex" not in fleet
        # The admin's CSRF token does not work with the viewer's session (bound to the session).
        assert vcsrf != csrf
        # Signing out clears the cookie.
        r = admin.post(real.url + "/ui/logout", data={"csrf": csrf}, allow_redirects=False, timeout=10)
        assert r.status_code == 303 and "Max-Age=0" in r.headers["set-cookie"]
    finally:
        real.stop()
