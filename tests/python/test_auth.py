"""Consumer authentication end to end (docs/auth.md): API keys in a header or a
query parameter (plain or stored as a SHA-256), and the 401 challenge."""

from __future__ import annotations

import hashlib

from helpers import assert_problem, base_config, metric_value

QUERY_KEY = "q-key-5d1c2e9a"
HEADER_KEY = "h-key-0b7f44c1"


def _challenge(r) -> str:
    h = r.headers.get("WWW-Authenticate", "")
    assert h.startswith('Bearer realm="tollgate", error="invalid_token", error_description="'), h
    return h


def _api_key_gateway(gateway, upstream):
    return gateway(base_config(
        unknown_consumer={"action": "deny"},
        consumers=[
            {"name": "mobile", "identify": {"api_key": {"key": "${env:Q_KEY}", "query": "api_key"}}},
            {"name": "partner", "identify": {"api_key": {
                "key_sha256": hashlib.sha256(HEADER_KEY.encode()).hexdigest(),
                "header": "Ocp-Apim-Subscription-Key"}}},
        ],
        apis=[{"name": "inv", "route": "/inv", "upstream": upstream.base}]),
        env={"Q_KEY": QUERY_KEY})


def test_api_key_in_query_is_consumed_and_never_logged(gateway, upstream):
    gw = _api_key_gateway(gateway, upstream)
    r = gw.route("GET", f"/inv/items?page=2&api_key={QUERY_KEY}&sort=asc")
    assert r.status_code == 200, r.text
    # The upstream never sees the key; other parameters pass unchanged.
    assert r.json()["path"] == "/items?page=2&sort=asc"
    e = gw.wait_access(lambda e: e.get("kind") == "route" and e.get("status") == 200)
    assert e["consumer"] == "mobile"
    assert QUERY_KEY not in e["path"], e
    # Wrong, repeated: 401 with the challenge, the key nowhere in the answer.
    for q in ("api_key=wrong", f"api_key={QUERY_KEY}&api_key={QUERY_KEY}"):
        r = gw.route("GET", f"/inv/items?{q}")
        problem = assert_problem(r, 401, "consumer_unidentified")
        assert QUERY_KEY not in _challenge(r) and QUERY_KEY not in r.text, problem
    assert len(upstream.requests) == 1
    assert QUERY_KEY not in gw.stderr_text()


def test_api_key_in_header_stored_as_sha256(gateway, upstream):
    gw = _api_key_gateway(gateway, upstream)
    r = gw.route("GET", "/inv/h", headers={"Ocp-Apim-Subscription-Key": HEADER_KEY})
    assert r.status_code == 200, r.text
    seen = {k.lower() for k, _ in r.json()["headers"]}
    assert "ocp-apim-subscription-key" not in seen
    e = gw.wait_access(lambda e: e.get("path") == "/inv/h")
    assert e["consumer"] == "partner"
    r = gw.route("GET", "/inv/h", headers={"Ocp-Apim-Subscription-Key": HEADER_KEY + "x"})
    assert_problem(r, 401, "consumer_unidentified")
    assert "not valid" in _challenge(r)
    # No credential at all: 401 too (unknown_consumer: deny).
    r = gw.route("GET", "/inv/h")
    assert_problem(r, 401, "consumer_unidentified")
    _challenge(r)
    assert len(upstream.requests) == 1


# --- JWT bearer tokens against a JWKS served by a test server -----------------

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISS = "https://idp.test"
AUD = "orders-api"


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _uint(n: int) -> str:
    return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class Key:
    """A signing key and its public JWK."""

    def __init__(self, kid: str, alg: str):
        self.kid, self.alg = kid, alg
        if alg == "RS256":
            self.priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pub = self.priv.public_key().public_numbers()
            self.jwk = {"kty": "RSA", "n": _uint(pub.n), "e": _uint(pub.e)}
        elif alg == "ES256":
            self.priv = ec.generate_private_key(ec.SECP256R1())
            pub = self.priv.public_key().public_numbers()
            self.jwk = {"kty": "EC", "crv": "P-256",
                        "x": _b64(pub.x.to_bytes(32, "big")), "y": _b64(pub.y.to_bytes(32, "big"))}
        else:
            self.priv = ed25519.Ed25519PrivateKey.generate()
            raw = self.priv.public_key().public_bytes(serialization.Encoding.Raw,
                                                      serialization.PublicFormat.Raw)
            self.jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}
        self.jwk.update({"kid": kid, "alg": alg, "use": "sig"})

    def sign(self, msg: bytes) -> bytes:
        if self.alg == "RS256":
            return self.priv.sign(msg, padding.PKCS1v15(), hashes.SHA256())
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.priv.sign(msg, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return self.priv.sign(msg)


def token(key: Key, header: dict | None = None, **claims) -> str:
    now = int(time.time())
    body = {"iss": ISS, "aud": AUD, "sub": "svc-orders", "iat": now, "exp": now + 300}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    head = {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
    head.update(header or {})
    signing = _b64(json.dumps(head).encode()) + "." + _b64(json.dumps(body).encode())
    return signing + "." + _b64(key.sign(signing.encode()))


class JwksServer(ThreadingHTTPServer):
    """Serves `keys` (mutable) as a JWKS on loopback and counts fetches."""
    daemon_threads = True

    def __init__(self, keys: list[Key]):
        self.keys, self.fetches = list(keys), 0
        server = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                server.fetches += 1
                body = json.dumps({"keys": [k.jwk for k in server.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/jwk-set+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), H)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/.well-known/jwks.json"


def _jwt_config(upstream, jwks: JwksServer, **issuer) -> dict:
    entry = {"name": "idp", "issuer": ISS, "jwks_url": jwks.url, "audiences": [AUD],
             "leeway": "5s", "min_refetch_interval": "1s"}
    entry.update(issuer)
    return base_config(
        unknown_consumer={"action": "deny"},
        auth={"jwt": [entry]},
        consumers=[{"name": "orders", "identify": {"jwt": {"issuer": "idp", "value": "svc-orders"}}},
                   {"name": "billing", "identify": {"jwt": {"issuer": "idp", "value": "svc-billing"}}}],
        apis=[{"name": "inv", "route": "/inv", "upstream": upstream.base}])


def _jwt_gateway(gateway, upstream, jwks: JwksServer, **issuer):
    return gateway(_jwt_config(upstream, jwks, **issuer))


def _call(gw, tok: str, path: str = "/inv/x"):
    return gw.route("GET", path, headers={"Authorization": f"Bearer {tok}"})


def test_jwt_valid_tokens_identify_consumers(gateway, upstream):
    keys = [Key("rsa-1", "RS256"), Key("ec-1", "ES256"), Key("ed-1", "EdDSA")]
    jwks = JwksServer(keys)
    try:
        gw = _jwt_gateway(gateway, upstream, jwks)
        for k in keys:
            r = _call(gw, token(k), f"/inv/{k.kid}")
            assert r.status_code == 200, (k.alg, r.text)
            e = gw.wait_access(lambda e, p=f"/inv/{k.kid}": e.get("path") == p)
            assert e["consumer"] == "orders", e
        r = _call(gw, token(keys[0], sub="svc-billing", aud=["other", AUD]), "/inv/b")
        assert r.status_code == 200, r.text
        assert gw.wait_access(lambda e: e.get("path") == "/inv/b")["consumer"] == "billing"
        # The backend receives the token (it may read further claims itself).
        assert dict((k.lower(), v) for k, v in r.json()["headers"])["authorization"].startswith("Bearer ")
    finally:
        jwks.shutdown()


def test_jwt_invalid_tokens_get_401(gateway, upstream):
    good, other = Key("rsa-1", "RS256"), Key("rsa-1", "RS256")
    jwks = JwksServer([good])
    try:
        gw = _jwt_gateway(gateway, upstream, jwks, algorithms=["RS256"])
        assert _call(gw, token(good)).status_code == 200
        now = int(time.time())
        unsigned = (_b64(json.dumps({"alg": "none", "kid": "rsa-1"}).encode()) + "."
                    + _b64(json.dumps({"iss": ISS, "aud": AUD, "sub": "svc-orders",
                                       "exp": now + 300}).encode()) + ".")
        hs = token(good, header={"alg": "HS256"})
        cases = {
            "expired": (token(good, exp=now - 60), "expired"),
            "not yet valid": (token(good, nbf=now + 600), "not valid yet"),
            "no exp": (token(good, exp=None), "no expiry"),
            "wrong issuer": (token(good, iss="https://evil.test"), "issuer"),
            "wrong audience": (token(good, aud="someone-else"), "audience"),
            "bad signature": (token(other), "signature"),
            "alg none": (unsigned, "algorithm"),
            "alg HS256": (hs, "algorithm"),
            "unknown subject": (token(good, sub="svc-nobody"), "no configured consumer"),
            "garbage": ("Zm9vYmFyYmF6.cXV4cXV1eA.c2lnbmF0dXJl", "not a valid JWT"),
        }
        for name, (tok, why) in cases.items():
            r = _call(gw, tok)
            problem = assert_problem(r, 401, "consumer_unidentified")
            assert why in problem["detail"], (name, problem)
            challenge = _challenge(r)
            assert why in challenge, (name, challenge)
            assert tok not in challenge and tok.split(".")[1] not in r.text, name
        assert len(upstream.requests) == 1
    finally:
        jwks.shutdown()


def test_jwt_key_rotation_without_downtime(gateway, upstream):
    old, new = Key("k-2026-01", "RS256"), Key("k-2026-02", "ES256")
    jwks = JwksServer([old])
    try:
        gw = _jwt_gateway(gateway, upstream, jwks)
        assert _call(gw, token(old)).status_code == 200
        fetches = jwks.fetches
        # The issuer publishes the new key next to the old one and starts signing with it:
        # the first request with the new kid waits for the refetch and is accepted.
        jwks.keys = [old, new]
        r = _call(gw, token(new))
        assert r.status_code == 200, r.text
        assert jwks.fetches == fetches + 1
        # During the overlap both keys are valid.
        assert _call(gw, token(old)).status_code == 200
        assert _call(gw, token(new)).status_code == 200
        # The old key is withdrawn: once the set is fetched again, old tokens are refused.
        jwks.keys = [new]
        time.sleep(1.1)  # past min_refetch_interval, so an unknown kid may refetch
        r = _call(gw, token(Key("k-unknown", "RS256")))
        assert_problem(r, 401, "consumer_unidentified")
        assert "key id" in r.json()["detail"]
        r = _call(gw, token(old))
        assert_problem(r, 401, "consumer_unidentified")
        assert _call(gw, token(new)).status_code == 200
        # Unknown kids do not hammer the JWKS: concurrent requests share one refetch.
        before = jwks.fetches
        junk = [token(Key(f"junk-{i}", "EdDSA")) for i in range(6)]
        with ThreadPoolExecutor(len(junk)) as pool:
            statuses = list(pool.map(lambda t: _call(gw, t).status_code, junk))
        assert statuses == [401] * len(junk)
        assert jwks.fetches <= before + 1
        # Fetch metrics: labelled by the issuer's name, never its URL; the gauge holds the
        # keys of the last successful fetch (only the new key is published now).
        m = gw.admin("GET", "/metrics").text
        assert (metric_value(m, "tollgate_jwks_fetches_total", issuer="idp", result="success") >= 3
                and metric_value(m, "tollgate_jwks_keys", issuer="idp") == 1
                and jwks.url not in m), m
    finally:
        jwks.shutdown()


def test_jwks_fetch_goes_through_the_network_guard(gateway, upstream):
    key = Key("rsa-1", "RS256")
    jwks = JwksServer([key])
    try:
        # Loopback is allowed for the backend's port only: the JWKS on loopback is refused.
        cfg_port = upstream.port
        gw = gateway(base_config(
            allow=[f"127.0.0.1:{cfg_port}"],
            unknown_consumer={"action": "deny"},
            auth={"jwt": [{"name": "idp", "issuer": ISS, "jwks_url": jwks.url, "audiences": [AUD]}]},
            consumers=[{"name": "orders", "identify": {"jwt": {"issuer": "idp", "value": "svc-orders"}}}],
            apis=[{"name": "inv", "route": "/inv", "upstream": upstream.base}]))
        r = _call(gw, token(key))
        assert_problem(r, 401, "consumer_unidentified")
        assert "key id" in r.json()["detail"]
        assert jwks.fetches == 0
        assert "JWKS fetch failed" in gw.stderr_text()
        assert metric_value(gw.admin("GET", "/metrics").text, "tollgate_jwks_fetches_total",
                            issuer="idp", result="failure") >= 1
        assert len(upstream.requests) == 0
    finally:
        jwks.shutdown()


def test_reload_keeps_fetched_keys(gateway, upstream):
    key = Key("ed-1", "EdDSA")
    jwks = JwksServer([key])
    try:
        cfg = _jwt_config(upstream, jwks)
        gw = gateway(cfg)
        assert _call(gw, token(key)).status_code == 200
        # The JWKS goes away, then the config is reloaded (a change elsewhere): the new
        # configuration starts with the keys already fetched, so tokens keep working.
        jwks.shutdown()
        jwks.server_close()
        cfg["apis"][0]["mode"] = "enforce"
        gw.write_config(cfg)
        version = gw.config_version()
        assert gw.reload().status_code == 200
        assert gw.config_version() > version
        assert _call(gw, token(key)).status_code == 200
    finally:
        jwks.shutdown()
