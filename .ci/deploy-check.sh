#!/usr/bin/env bash
# Deployment files: renders each kustomize overlay and validates every rendered object (and the
# Secret template) against the Kubernetes schemas; validates deploy/compose.yaml against the
# Compose specification and resolves it as Compose would, for the keyless demo and for fal.ai.
# The tools come from package registries and work offline once installed. The image itself is
# not built here: its base images come from a container registry this machine cannot reach.
#
# The Rust test crates/api/tests/deploy_manifests.rs checks the same files against the binary
# (variables, probe paths, ports, commands).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

kubernetes_validate_version=1.37.0
check_jsonschema_version=0.39.0

venv=${DEPLOY_CHECK_VENV:-target/deploy-check-venv}
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$kubernetes_validate_version" \
  || ! "$venv/bin/check-jsonschema" --version 2>/dev/null | grep -q "$check_jsonschema_version"; then
  log "installing kubernetes-validate $kubernetes_validate_version and check-jsonschema $check_jsonschema_version"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==$kubernetes_validate_version" \
    "check-jsonschema==$check_jsonschema_version"
fi

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "$@" || { apt-get update -q && apt-get install -y -q "$@"; }
}

# kustomize: kubectl's built-in one (kustomize v4 or later: the overlays use `labels` and
# inline patches), or a standalone kustomize.
render() {
  if kubectl kustomize --help >/dev/null 2>&1 \
    && kubectl version --client 2>/dev/null | grep -Eq 'Kustomize Version: v[4-9]'; then
    kubectl kustomize "$1"
  elif command -v kustomize >/dev/null 2>&1; then
    kustomize build "$1"
  else
    return 3
  fi
}
if ! render deploy/k8s/base >/dev/null 2>&1; then
  log "installing kubectl (for kustomize)"
  apt_install kubectl || true
  if ! render deploy/k8s/base >/dev/null; then
    echo "deploy-check: needs kustomize v4 or later: kubectl 1.21+ (package kubectl) or kustomize" >&2
    exit 1
  fi
fi
command -v docker-compose >/dev/null 2>&1 || { log "installing docker-compose"; apt_install docker-compose; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for overlay in deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  log "kustomize: rendering and validating the $name overlay"
  render "$overlay" >"$work/$name.yaml"
  grep -c '^kind:' "$work/$name.yaml" | xargs printf '%s objects rendered\n'
  "$venv/bin/kubernetes-validate" --strict --quiet "$work/$name.yaml"
  "$venv/bin/python" .ci/deploy-references.py "$work/$name.yaml"
done
log "the reference check catches selectors leaking into other pods' selectors"
cp -r deploy/k8s "$work/k8s"
sed -i 's/includeSelectors: false/includeSelectors: true/' "$work/k8s/base/kustomization.yaml"
render "$work/k8s/overlays/prod" >"$work/leaky.yaml"
if "$venv/bin/python" .ci/deploy-references.py "$work/leaky.yaml" >"$work/leaky.out"; then
  echo "deploy-check: selectors written into the NetworkPolicy's peers were not caught" >&2
  exit 1
fi
grep -q 'requires this service' "$work/leaky.out"

log "validating the Secret template"
"$venv/bin/kubernetes-validate" --strict --quiet deploy/k8s/base/secret.template.yaml

log "compose: the Compose specification's schema"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml

log "compose: resolving the file for the keyless demo and for fal.ai"
docker-compose -f deploy/compose.yaml --env-file deploy/demo.env config >"$work/demo.yaml"
grep -q 'FAL_QUEUE_URL: http://fal-sim:9000/queue' "$work/demo.yaml"
env -u COMPOSE_PROFILES FAL_KEY=id:secret PUBLIC_BASE_URL=https://avatars.example.com \
  SECRETS_KEYS=k1:MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE= \
  docker-compose -f deploy/compose.yaml config >"$work/fal.yaml"
grep -q "FAL_QUEUE_URL: ''" "$work/fal.yaml"
# Without a key ring (and without the demo settings) it refuses too, naming SECRETS_KEYS.
if env -u SECRETS_KEYS -u COMPOSE_PROFILES FAL_KEY=id:secret \
  docker-compose -f deploy/compose.yaml config >/dev/null 2>"$work/err"; then
  echo "deploy-check: compose started without SECRETS_KEYS" >&2
  exit 1
fi
grep -q SECRETS_KEYS "$work/err"
# Without a key and without the demo settings the file refuses to start, naming FAL_KEY.
if env -u FAL_KEY -u COMPOSE_PROFILES docker-compose -f deploy/compose.yaml config >/dev/null 2>"$work/err"; then
  echo "deploy-check: compose started without FAL_KEY" >&2
  exit 1
fi
grep -q FAL_KEY "$work/err"
echo "deploy files: valid"
