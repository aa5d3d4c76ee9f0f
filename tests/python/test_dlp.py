"""Data-loss protection and body size limits, end to end with `requests`
through a real `tollgate run` and a real echo upstream: block (403, the
upstream never hit), redact (the upstream gets the masked body with a correct
Content-Length), report, forms, gzip bodies, response scanning, untouched
streaming of bodies that need no scan, and body limits."""

from __future__ import annotations

import gzip
import json

from helpers import assert_problem, base_config, metric_value

CARD = "4111111111111111"
EMAIL = "jane@corp.example"


def dlp_api(upstream, dlp=None, **extra):
    api = {"name": "crm", "route": "/crm", "upstream": upstream.base}
    if dlp is not None:
        api["dlp"] = dlp
    api.update(extra)
    return base_config(apis=[api])


def seen_header(record, name):
    return {k.lower(): v for k, v in record["headers"]}.get(name)


def test_block_refuses_and_names_the_detector_not_the_data(gateway, upstream):
    gw = gateway(dlp_api(upstream, {"detectors": {"card": "block", "email": "report"}}))
    r = gw.route("POST", "/crm/notes", json={"card": CARD, "to": EMAIL})
    problem = assert_problem(r, 403, "dlp_blocked")
    assert "`card`" in problem["detail"]
    assert CARD not in r.text and EMAIL not in r.text
    assert upstream.requests == []
    entry = gw.wait_access(lambda e: e.get("api") == "crm")
    assert entry["dlp"] == "card:1,email:1"
    assert entry["reason"] == "dlp_blocked"
    assert CARD not in json.dumps(entry)
    m = gw.admin("GET", "/metrics").text
    assert metric_value(m, "tollgate_dlp_findings_total", api="crm", detector="card", action="block") == 1, m


def test_redact_masks_json_and_form_bodies(gateway, upstream):
    gw = gateway(dlp_api(upstream, {"detectors": {"card": "redact", "email": "redact"}}))
    r = gw.route("POST", "/crm/notes", json={"card": f"{CARD[:4]} {CARD[4:8]} {CARD[8:12]} {CARD[12:]}", "n": 1})
    assert r.status_code == 200, r.text
    rec = upstream.requests[-1]
    assert json.loads(rec["body"]) == {"card": "[REDACTED:card]", "n": 1}
    assert seen_header(rec, "content-length") == str(len(rec["body"].encode()))
    r = gw.route("POST", "/crm/form", data={"mail": EMAIL, "x": "1"})
    assert r.status_code == 200, r.text
    assert upstream.requests[-1]["body"] == "mail=%5BREDACTED%3Aemail%5D&x=1"


def test_report_passes_unchanged_and_logs(gateway, upstream):
    gw = gateway(dlp_api(upstream, {"detectors": {"ssn": "report", "iban": "report"}}))
    body = "ssn 123-45-6789, iban GB82WEST12345698765432, not an ssn 666-12-3456"
    r = gw.route("POST", "/crm/t", data=body.encode(), headers={"content-type": "text/plain"})
    assert r.status_code == 200
    assert upstream.requests[-1]["body"] == body
    entry = gw.wait_access(lambda e: e.get("api") == "crm")
    assert entry["dlp"] == "iban:1,ssn:1"


def test_gzip_request_body_is_scanned(gateway, upstream):
    gw = gateway(dlp_api(upstream, {"detectors": {"aws_key": "block", "email": "redact"}}))
    blocked = gzip.compress(b'{"k":"AKIAIOSFODNN7EXAMPLE"}')
    r = gw.route("POST", "/crm/x", data=blocked,
                 headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert_problem(r, 403, "dlp_blocked")
    assert upstream.requests == []
    redacted = gzip.compress(json.dumps({"to": EMAIL}).encode())
    r = gw.route("POST", "/crm/x", data=redacted,
                 headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 200
    rec = upstream.requests[-1]
    assert json.loads(rec["body"]) == {"to": "[REDACTED:email]"}
    assert seen_header(rec, "content-encoding") is None


def test_response_scanning_redacts_what_comes_back(gateway, upstream):
    # The echo upstream reflects the request body in its JSON answer.
    gw = gateway(dlp_api(upstream, {"scan": ["response"], "detectors": {"email": "redact"}}))
    r = gw.route("POST", "/crm/echo", json={"to": EMAIL})
    assert r.status_code == 200
    assert upstream.requests[-1]["body"] == json.dumps({"to": EMAIL})  # request not scanned
    assert EMAIL not in r.text
    assert "[REDACTED:email]" in r.text
    assert r.headers["content-length"] == str(len(r.content))


def test_unscanned_types_stream_untouched(gateway, upstream):
    gw = gateway(dlp_api(upstream, {"detectors": {"card": "block"}, "max_scan": "1KiB"}))
    payload = (f"{CARD} ".encode() * 70000)[: 512 * 1024]

    def chunks():
        for i in range(0, len(payload), 16 * 1024):
            yield payload[i:i + 16 * 1024]

    r = gw.route("POST", "/crm/blob", data=chunks(), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200
    rec = upstream.requests[-1]
    assert rec["body"].encode() == payload
    assert seen_header(rec, "transfer-encoding") == "chunked"


def test_body_limits(gateway, upstream):
    gw = gateway(dlp_api(upstream, body_limits={"request": "1KiB", "response": "10KiB"}))
    r = gw.route("POST", "/crm/up", data=b"x" * 5000)
    assert_problem(r, 413, "request_too_large")
    assert upstream.requests == []
    assert gw.route("POST", "/crm/up", data=b"x" * 1024).status_code == 200
    r = gw.route("GET", "/crm/big?bytes=20000")
    assert_problem(r, 502, "response_too_large")
    r = gw.route("GET", "/crm/big?bytes=10240")
    assert r.status_code == 200 and len(r.content) == 10240


def test_invalid_custom_regex_fails_validation(run_cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "apis:\n  - name: a\n    hosts: [a.example]\n"
        "    dlp: { custom: [ { name: t, regex: \"([a-z\", action: block } ] }\n")
    r = run_cli("validate", cfg)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "apis[0].dlp.custom[0].regex" in r.stdout + r.stderr


def test_json_unicode_escapes_are_decoded_before_scanning(gateway, upstream):
    """A card number written with `\\uXXXX` escapes is still found; the redacted body stays valid JSON."""
    gw = gateway(dlp_api(upstream, {"detectors": {"card": "redact", "email": "block"}}))
    escaped = "".join(f"\\u{ord(c):04x}" for c in CARD)
    raw = '{"note":"pay \\"' + escaped + '\\" today","n":1}'
    assert json.loads(raw)["note"] == f'pay "{CARD}" today'
    r = gw.route("POST", "/crm/notes", data=raw.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    rec = upstream.requests[-1]
    assert json.loads(rec["body"]) == {"note": 'pay "[REDACTED:card]" today', "n": 1}
    assert seen_header(rec, "content-length") == str(len(rec["body"].encode()))
    entry = gw.wait_access(lambda e: e.get("api") == "crm" and e.get("dlp"))
    assert entry["dlp"] == "card:1"
    # An escaped e-mail address is blocked like a plain one; the upstream never sees it.
    before = len(upstream.requests)
    r = gw.route("POST", "/crm/notes", data=b'{"to":"jane\\u0040corp.example"}',
                 headers={"content-type": "application/json; charset=utf-8"})
    assert_problem(r, 403, "dlp_blocked")
    assert len(upstream.requests) == before
