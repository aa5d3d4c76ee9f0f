"""The CLI: validate, explain, schema, --help."""

from __future__ import annotations

import json
import re

import pytest

GOOD = """\
default_action: deny
network_guard:
  allow: ["127.0.0.1/32"]
server:
  shutdown_grace: 5s
consumers:
  - name: checkout
    identify:
      header: { name: x-tollgate-consumer, value: checkout }
    apis: [payments]
apis:
  - name: payments
    hosts: ["api.payments.example", "*.payments.example"]
    allow:
      - methods: [GET]
        paths: ["/v1/**"]
  - name: other
    hosts: ["other.example"]
"""

# Line 8 has an unknown key two levels deep, line 3 a bad duration.
BAD = """\
default_action: deny
server:
  shutdown_grace: 5 parsecs
apis:
  - name: payments
    hosts: ["api.payments.example"]
    allow:
      - methodz: [GET]
"""


def test_validate_good_file(run_cli, tmp_path):
    f = tmp_path / "good.yaml"
    f.write_text(GOOD)
    p = run_cli("validate", f)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "" or "error" not in p.stderr.lower()


def test_validate_bad_file_reports_every_error_with_location(run_cli, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    p = run_cli("validate", f)
    assert p.returncode == 1, (p.stdout, p.stderr)
    err = p.stderr
    locs = re.findall(rf"{re.escape(str(f))}:(\d+):(\d+): (\S+)", err)
    assert locs, err
    by_line = {int(line): (int(col), path) for line, col, path in locs}
    # The unknown key, at depth, with its full key path.
    assert 8 in by_line, err
    assert "apis[0].allow[0]" in by_line[8][1], err
    assert "methodz" in err
    # The bad duration.
    assert 3 in by_line, err
    assert by_line[3][1].rstrip(":") == "server.shutdown_grace", err
    assert "parsecs" in err or "duration" in err.lower()


def test_validate_missing_secret_and_bad_pattern(run_cli, tmp_path):
    f = tmp_path / "bad2.yaml"
    f.write_text(
        "consumers:\n"
        "  - name: acme\n"
        "    identify:\n"
        "      api_key: { key: \"${env:TG_TEST_SURELY_UNSET_VAR}\" }\n"
        "apis:\n"
        "  - name: a\n"
        "    hosts: [a.example]\n"
        "    allow:\n"
        "      - paths: [\"/v1/**/x/**{\"]\n")
    p = run_cli("validate", f)
    assert p.returncode == 1
    assert re.search(rf"{re.escape(str(f))}:\d+:\d+: ", p.stderr), p.stderr


def test_validate_nonexistent_file(run_cli, tmp_path):
    p = run_cli("validate", tmp_path / "missing.yaml")
    assert p.returncode == 1


@pytest.fixture
def good_file(tmp_path):
    f = tmp_path / "good.yaml"
    f.write_text(GOOD)
    return f


def test_explain_allowed(run_cli, good_file):
    p = run_cli("explain", good_file, "--consumer", "checkout", "GET https://api.payments.example/v1/charges")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert re.search(r"^consumer:\s+checkout", out, re.M), out
    assert re.search(r"^api:\s+payments", out, re.M), out
    assert re.search(r"^stages:", out, re.M), out
    assert re.search(r"^outcome:\s+ALLOW", out, re.M), out


def test_explain_denied(run_cli, good_file):
    p = run_cli("explain", good_file, "--consumer", "checkout", "POST https://api.payments.example/v1/charges")
    assert p.returncode == 0, p.stderr
    assert re.search(r"^outcome:\s+DENY 403 endpoint_not_allowed", p.stdout, re.M), p.stdout
    p = run_cli("explain", good_file, "--consumer", "checkout", "GET https://other.example/")
    assert re.search(r"^outcome:\s+DENY 403 consumer_not_allowed", p.stdout, re.M), p.stdout
    p = run_cli("explain", good_file, "GET https://unknown.example/")
    assert re.search(r"^outcome:\s+DENY 403 destination_not_allowed", p.stdout, re.M), p.stdout


def test_explain_identifies_from_header_and_json(run_cli, good_file):
    p = run_cli("explain", good_file, "-H", "x-tollgate-consumer: checkout", "--json",
                "GET https://x.payments.example/v1/a")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    for key in ("kind", "method", "consumer", "api", "target", "decision", "error", "reported", "trace"):
        assert key in doc, (key, doc)
    assert doc["consumer"] == "checkout"
    assert doc["api"] == "payments"
    assert doc["decision"] == "allow"
    assert doc["method"] == "GET"
    assert isinstance(doc["trace"], list) and doc["trace"]


def test_schema(run_cli):
    p = run_cli("schema")
    assert p.returncode == 0, p.stderr
    schema = json.loads(p.stdout)
    assert "properties" in schema
    for key in ("apis", "consumers", "network_guard", "default_action"):
        assert key in schema["properties"], key


@pytest.mark.parametrize("sub", [[], ["run"], ["validate"], ["explain"], ["schema"]])
def test_help(run_cli, sub):
    p = run_cli(*sub, "--help")
    assert p.returncode == 0, p.stderr
    assert "Usage" in p.stdout
