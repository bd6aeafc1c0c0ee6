#!/usr/bin/env bash
# Builds the upstream binaries the end-to-end tests need, from the Go module proxy with the machine's Go,
# and caches them by version outside the repository, so only the first run pays:
#   kube-apiserver and kubectl (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3), helm (helm.sh/helm/v3),
#   promtool (github.com/prometheus/prometheus, to run the chart's alert rules), helm-docs (the chart's
#   README from its values).
# Prints the bin directory on stdout. Re-running with everything cached takes milliseconds.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.307.3}   # the Go module version of Prometheus 3.7.3
HELM_DOCS_VERSION=${HELM_DOCS_VERSION:-v1.14.2}
CACHE=${TOLLGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}
BIN="$CACHE/bin"
mkdir -p "$BIN"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
log() { echo "provision: $*" >&2; }

# kubernetes_module, kubernetes_ldflags
source "$(dirname "${BASH_SOURCE[0]}")/../kubernetes-module.sh"

build_kubernetes() {
  local out_apiserver="$BIN/kube-apiserver-$K8S_VERSION" out_kubectl="$BIN/kubectl-$K8S_VERSION"
  [[ -x "$out_apiserver" && -x "$out_kubectl" ]] && return
  log "building kube-apiserver and kubectl $K8S_VERSION (first run only; 10-20 minutes on 2 cores)"
  local work; work=$(mktemp -d)
  (
    cd "$work"
    kubernetes_module
    local ldflags; ldflags=$(kubernetes_ldflags)
    go build -trimpath -ldflags "$ldflags" -o "$out_apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
    go build -trimpath -ldflags "$ldflags" -o "$out_kubectl.tmp" k8s.io/kubernetes/cmd/kubectl
  )
  mv "$out_apiserver.tmp" "$out_apiserver"
  mv "$out_kubectl.tmp" "$out_kubectl"
  rm -rf "$work"
}

build_etcd() {
  local out="$BIN/etcd-$ETCD_VERSION"
  [[ -x "$out" ]] && return
  log "building etcd $ETCD_VERSION (first run only)"
  local work; work=$(mktemp -d)
  (
    cd "$work"
    printf 'module tollgate.local/etcd-binary\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
    go build -trimpath -ldflags "-s -w" -o "$out.tmp" go.etcd.io/etcd/server/v3
  )
  mv "$out.tmp" "$out"
  rm -rf "$work"
}

build_helm() {
  # -r2: built with helm's own Kubernetes version ldflags (without them `helm template` assumes 1.20).
  local out="$BIN/helm-$HELM_VERSION-r2"
  [[ -x "$out" ]] && return
  log "building helm $HELM_VERSION (first run only)"
  local gomod client_go minor gobin
  gomod=$(GOFLAGS= go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
  client_go=$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$gomod")   # v0.34.2 -> Kubernetes 1.34
  minor=$(echo "$client_go" | cut -d. -f2)
  local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags="$ldflags -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
  done
  gobin=$(mktemp -d)
  GOFLAGS= GOBIN="$gobin" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$gobin/helm" "$out"
  rm -rf "$gobin"
}

build_promtool() {
  local out="$BIN/promtool-$PROMETHEUS_VERSION"
  [[ -x "$out" ]] && return
  log "building promtool $PROMETHEUS_VERSION (first run only)"
  local dir
  dir=$(GOFLAGS= go mod download -json "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
  # `go install pkg@version` refuses Prometheus (its go.mod has exclude directives): build inside the module.
  (cd "$dir" && GOFLAGS= go build -trimpath -ldflags "-s -w" -o "$out.tmp" ./cmd/promtool)
  mv "$out.tmp" "$out"
}

build_helm_docs() {
  local out="$BIN/helm-docs-$HELM_DOCS_VERSION"
  [[ -x "$out" ]] && return
  log "building helm-docs $HELM_DOCS_VERSION (first run only)"
  local gobin
  gobin=$(mktemp -d)
  GOFLAGS= GOBIN="$gobin" go install -trimpath -ldflags "-s -w" "github.com/norwoodj/helm-docs/cmd/helm-docs@$HELM_DOCS_VERSION"
  mv "$gobin/helm-docs" "$out"
  rm -rf "$gobin"
}

build_etcd
build_helm
build_promtool
build_helm_docs
build_kubernetes
for name in kube-apiserver kubectl; do ln -sf "$name-$K8S_VERSION" "$BIN/$name"; done
ln -sf "etcd-$ETCD_VERSION" "$BIN/etcd"
ln -sf "helm-$HELM_VERSION-r2" "$BIN/helm"
ln -sf "promtool-$PROMETHEUS_VERSION" "$BIN/promtool"
ln -sf "helm-docs-$HELM_DOCS_VERSION" "$BIN/helm-docs"
echo "$BIN"
