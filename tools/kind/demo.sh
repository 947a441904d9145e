#!/usr/bin/env bash
# The CPU demo in real pods, on kind (Kubernetes in Docker): for machines with Docker, kind,
# helm and kubectl on PATH and internet access. NOT run on lorafleet's development machines
# (no Docker there): `make demo` is the tested path. Conventional steps only:
#   up    kind cluster + KubeRay (its own chart) + lorafleet images loaded + lorafleet chart
#   demo  up, then MinIO in the cluster, the tiny model and adapters uploaded, the demo's
#         AdapterCatalog and LoRAModel applied, and OpenAI calls through a port-forward
#   down  delete the kind cluster
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cluster=${KIND_CLUSTER:-lorafleet}
namespace=lorafleet-demo
registry=lorafleet.local
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml")
kuberay_version=${KUBERAY_CHART_VERSION:-1.7.0}
python=${PYTHON:-$repo/.venv/bin/python}

need() { command -v "$1" >/dev/null || { echo "kind demo: $1 is not installed" >&2; exit 1; }; }
log() { printf '\n== %s\n' "$*"; }

up() {
  for tool in docker kind helm kubectl; do need "$tool"; done
  if ! kind get clusters | grep -qx "$cluster"; then
    log "kind create cluster --name $cluster"
    kind create cluster --name "$cluster" --wait 120s
  fi
  kubectl config use-context "kind-$cluster" >/dev/null
  log "KubeRay operator $kuberay_version (its own chart and CRDs)"
  helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update >/dev/null
  helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$kuberay_version" \
    --namespace kuberay-system --create-namespace --wait
  log "lorafleet images ($registry/operator:$version, $registry/runtime:$version-cpu)"
  make -C "$repo" images REGISTRY="$registry"
  kind load docker-image --name "$cluster" "$registry/operator:$version" "$registry/runtime:$version-cpu"
  log "lorafleet chart"
  helm upgrade --install lorafleet "$repo/charts/lorafleet" \
    --namespace lorafleet-system --create-namespace --wait \
    --set image.repository="$registry/operator" \
    --set runtimeImage.repository="$registry/runtime" --set runtimeImage.tag="$version-cpu"
}

demo() {
  up
  need "$python"
  log "MinIO in namespace $namespace"
  kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f -
  local access=lorafleet-demo secret
  secret=$(kubectl get secret demo-s3 -n "$namespace" -o jsonpath='{.data.AWS_SECRET_ACCESS_KEY}' 2>/dev/null | base64 -d || true)
  [ -n "$secret" ] || secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  kubectl create secret generic demo-s3 -n "$namespace" --dry-run=client -o yaml \
    --from-literal=AWS_ACCESS_KEY_ID="$access" --from-literal=AWS_SECRET_ACCESS_KEY="$secret" \
    | kubectl apply -f -
  kubectl apply -n "$namespace" -f "$here/minio.yaml"
  kubectl rollout status -n "$namespace" deployment/minio --timeout=180s
  log "The tiny model and adapters into the bucket (through a port-forward)"
  kubectl port-forward -n "$namespace" svc/minio 19000:9000 >/dev/null 2>&1 &
  local forward=$!
  trap 'kill $forward 2>/dev/null || true' EXIT
  sleep 3
  AWS_ACCESS_KEY_ID=$access AWS_SECRET_ACCESS_KEY=$secret "$python" - <<'PY'
import boto3, pathlib
from lorafleet_testbed.demo_content import build_demo_files, fill_bucket
from lorafleet_testbed.toolchain import cache_dir
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:19000", region_name="us-east-1")
print(fill_bucket(s3, build_demo_files(cache_dir() / "demo-files")), "files uploaded")
PY
  log "AdapterCatalog and LoRAModel (examples/demo, endpoint = the in-cluster MinIO Service)"
  for f in adapter-catalog lora-model; do
    sed "s#http://10.245.0.1:9000#http://minio.$namespace.svc:9000#" "$repo/examples/demo/$f.yaml" \
      | kubectl apply -n "$namespace" -f -
  done
  kubectl wait -n "$namespace" loramodel/tiny --for=condition=Ready --timeout=900s
  kubectl get -n "$namespace" loramodels,adaptercatalogs,rayservices
  log "OpenAI calls through a port-forward of the Serve Service"
  kubectl port-forward -n "$namespace" svc/tiny 18000:8000 >/dev/null 2>&1 &
  sleep 3
  "$python" -c "
from lorafleet_testbed.demo_content import ADAPTERS, ask
print('\n'.join(ask('http://127.0.0.1:18000/v1', 'tiny', list(ADAPTERS)[:2])))"
}

down() {
  need kind
  kind delete cluster --name "$cluster"
}

case "${1:-}" in
  up) up ;;
  demo) demo ;;
  down) down ;;
  *) echo "usage: $0 up|demo|down" >&2; exit 2 ;;
esac
