#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the end-to-end
# suite that drives the real binary with curl and Python `requests`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Test-only Python dependencies (pytest, requests, httpx, PyYAML), installed once per machine.
if ! python3 -c 'import pytest, requests, httpx, yaml, cryptography, selenium, grpc, google.protobuf, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc, tzdata' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi
command -v curl >/dev/null || { echo "curl is required for the end-to-end tests" >&2; exit 1; }

cargo build --locked -p tollgate
cargo test --workspace --locked
TOLLGATE_BIN="$PWD/target/debug/tollgate" python3 -m pytest tests/python -q -p no:cacheprovider
TOLLGATE_BIN="$PWD/target/debug/tollgate" python3 -m pytest clients/python/tests -q -p no:cacheprovider
