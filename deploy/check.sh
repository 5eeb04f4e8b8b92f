#!/usr/bin/env bash
# Checks the platform files without a cluster or a Docker engine: hadolint on the Dockerfile,
# every Kustomize overlay rendered by kubectl (KUBECTL=... to pick one), the rendered objects
# and the example Secret validated by kubernetes-validate, the Grafana dashboard parsed as JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
KUBECTL=${KUBECTL:-kubectl}

echo "== hadolint Dockerfile"
hadolint Dockerfile

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
echo "== $("$KUBECTL" version --client 2>/dev/null | head -1)"
for overlay in deploy/kubernetes/overlays/*/; do
  name=$(basename "$overlay")
  echo "== kubectl kustomize $overlay"
  # The manifests keep the `bases:`/`patchesStrategicMerge:` forms that old kustomize (Debian's
  # kubectl 1.20) needs; new kustomize warns that they are deprecated, which is expected.
  "$KUBECTL" kustomize "$overlay" >"$rendered/$name.yaml" 2> >(grep -v "is deprecated" >&2)
  "$PYTHON" deploy/validate_manifests.py "$rendered/$name.yaml"
done
echo "== example Secret"
"$PYTHON" deploy/validate_manifests.py deploy/kubernetes/database-secret.example.yaml

echo "== Grafana dashboard"
"$PYTHON" -m json.tool deploy/grafana/herd.json >/dev/null
echo "deploy checks passed"
