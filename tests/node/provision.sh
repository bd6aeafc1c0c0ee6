#!/usr/bin/env bash
# The node counterpart of tests/control-plane/provision.sh: builds what a one-node cluster needs beside the
# control plane, from the Go module proxy with the machine's Go, and caches it by version in the same bin
# directory (beside kube-apiserver), so only the first run pays:
#   containerd, containerd-shim-runc-v2 and ctr (github.com/containerd/containerd/v2);
#   kubelet, kube-scheduler, kube-controller-manager and kube-proxy (k8s.io/kubernetes, at the control plane's
#   version, with the same wrapper module and version ldflags);
#   kube-router (github.com/cloudnativelabs/kube-router/v2), run with only its network policy controller:
#   what makes NetworkPolicies real on the node;
#   coredns (github.com/coredns/coredns), with only the plugins a cluster DNS needs: Service names for pods.
# From Debian, where missing: runc, the CNI plugins (/usr/lib/cni), nft (kube-proxy's nftables mode execs it
# through knftables), iptables (the portmap plugin and kubelet's canary chains; kube-router's filter rules),
# ipset (kube-router's address sets) and ip (iproute2).
# Everything is built with CGO_ENABLED=0: nothing these binaries import needs cgo (only net and os/user have
# cgo variants, and their pure-Go ones are used), so they are static.
# Prints the bin directory on stdout, logs on stderr. Starts nothing. Re-running with everything cached takes
# milliseconds.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.2.9}   # the newest v2.2.x on the module proxy when written
KUBE_ROUTER_VERSION=${KUBE_ROUTER_VERSION:-v2.1.0}  # the newest kube-router/v2 the module proxy serves here
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
CACHE=${TOLLGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}
BIN="$CACHE/bin"
mkdir -p "$BIN"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
log() { echo "provision-node: $*" >&2; }

WORK=
cleanup() { [[ -z "$WORK" ]] || rm -rf "$WORK"; }
trap cleanup EXIT
workdir() {   # a fresh directory under one temporary root, removed on exit
  [[ -n "$WORK" ]] || WORK=$(mktemp -d)
  mktemp -d "$WORK/XXXXXX"
}

# Builds package $2 to $1 in the current directory's module, logging how long it took.
go_build() {
  local out=$1 pkg=$2; shift 2
  local start=$SECONDS
  go build -trimpath "$@" -o "$out.tmp" "$pkg"
  mv "$out.tmp" "$out"
  log "built $(basename "$out") in $((SECONDS - start)) s"
}

debian_packages() {
  have() { command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/sbin/$1" ]]; }
  local missing=() plugin
  have runc || missing+=(runc)
  for plugin in bridge host-local loopback portmap; do
    [[ -x "/usr/lib/cni/$plugin" ]] || { missing+=(containernetworking-plugins); break; }
  done
  have nft || missing+=(nftables)
  have iptables || missing+=(iptables)
  have ipset || missing+=(ipset)
  have ip || missing+=(iproute2)
  ((${#missing[@]})) || return 0
  local sudo=(); [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  log "installing from Debian: ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

build_containerd() {
  local v=$CONTAINERD_VERSION
  local out_containerd="$BIN/containerd-$v" out_shim="$BIN/containerd-shim-runc-v2-$v" out_ctr="$BIN/ctr-$v"
  [[ -x "$out_containerd" && -x "$out_shim" && -x "$out_ctr" ]] && return
  log "building containerd $v (first run only; about a minute)"
  local work; work=$(workdir)
  (
    cd "$work"
    # containerd's go.mod has no replace directives: requiring it is enough.
    printf 'module tollgate.local/containerd-binaries\n\ngo 1.25\n\nrequire github.com/containerd/containerd/v2 %s\n' "$v" > go.mod
    local pkg=github.com/containerd/containerd/v2
    local ldflags="-s -w -X $pkg/version.Version=$v -X $pkg/version.Package=$pkg"
    # The tags of containerd's Makefile, without the snapshotters that need cgo and host tools.
    [[ -x "$out_containerd" ]] || go_build "$out_containerd" "$pkg/cmd/containerd" \
      -tags "urfave_cli_no_docs no_btrfs no_devmapper no_zfs" -ldflags "$ldflags"
    [[ -x "$out_ctr" ]] || go_build "$out_ctr" "$pkg/cmd/ctr" \
      -tags "urfave_cli_no_docs no_btrfs no_devmapper no_zfs" -ldflags "$ldflags"
    # The shim as the Makefile builds it: static (SHIM_CGO_ENABLED=0), without gRPC.
    [[ -x "$out_shim" ]] || go_build "$out_shim" "$pkg/cmd/containerd-shim-runc-v2" \
      -tags "urfave_cli_no_docs no_grpc" -ldflags "$ldflags"
  )
}

# kubernetes_module, kubernetes_ldflags
source "$(dirname "${BASH_SOURCE[0]}")/../kubernetes-module.sh"

build_kubernetes_node() {
  local names=(kubelet kube-scheduler kube-controller-manager kube-proxy) name missing=()
  for name in "${names[@]}"; do [[ -x "$BIN/$name-$K8S_VERSION" ]] || missing+=("$name"); done
  ((${#missing[@]})) || return 0
  log "building ${missing[*]} $K8S_VERSION (first run only; minutes each on 2 cores, fewer once kube-apiserver's modules are cached)"
  local work; work=$(workdir)
  (
    cd "$work"
    kubernetes_module
    local ldflags; ldflags=$(kubernetes_ldflags)
    for name in "${missing[@]}"; do
      go_build "$BIN/$name-$K8S_VERSION" "k8s.io/kubernetes/cmd/$name" -ldflags "$ldflags"
    done
  )
}

# kube-router with only its network policy controller in mind (the node runs it with --run-firewall only).
# Its go.mod has no replace directives: a wrapper module requiring it is enough.
build_kube_router() {
  local v=$KUBE_ROUTER_VERSION out="$BIN/kube-router-$KUBE_ROUTER_VERSION"
  [[ -x "$out" ]] && return
  log "building kube-router $v (first run only; a few minutes)"
  local work; work=$(workdir)
  (
    cd "$work"
    printf 'module tollgate.local/kube-router-binary\n\ngo 1.21\n\nrequire github.com/cloudnativelabs/kube-router/v2 %s\n' "$v" > go.mod
    local pkg=github.com/cloudnativelabs/kube-router/v2
    go_build "$out" "$pkg/cmd/kube-router" -ldflags "-s -w -X $pkg/pkg/version.Version=$v -X $pkg/pkg/version.BuildDate=module-proxy"
  )
}

# CoreDNS with the plugins a cluster DNS needs (coredns/main.go beside this script: the kubernetes plugin answers
# Service names; no forward: pods here reach nothing outside the cluster).
build_coredns() {
  local v=$COREDNS_VERSION out="$BIN/coredns-$COREDNS_VERSION"
  [[ -x "$out" ]] && return
  log "building coredns $v (first run only; a few minutes)"
  local work; work=$(workdir)
  cp "$(dirname "$0")/coredns/main.go" "$work/"
  (
    cd "$work"
    printf 'module tollgate.local/coredns-binary\n\ngo 1.26\n\nrequire github.com/coredns/coredns %s\n' "$v" > go.mod
    go_build "$out" . -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$v"
  )
}

debian_packages
build_containerd
build_kubernetes_node
build_kube_router
build_coredns
for name in containerd containerd-shim-runc-v2 ctr; do ln -sfn "$name-$CONTAINERD_VERSION" "$BIN/$name"; done
for name in kubelet kube-scheduler kube-controller-manager kube-proxy; do ln -sfn "$name-$K8S_VERSION" "$BIN/$name"; done
ln -sfn "kube-router-$KUBE_ROUTER_VERSION" "$BIN/kube-router"
ln -sfn "coredns-$COREDNS_VERSION" "$BIN/coredns"
echo "$BIN"
