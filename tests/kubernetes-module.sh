# Sourced by tests/control-plane/provision.sh and tests/node/provision.sh, which build binaries of
# k8s.io/kubernetes from the Go module proxy with the machine's Go. Needs K8S_VERSION.

# In the current directory, a wrapper module requiring k8s.io/kubernetes $K8S_VERSION. Its own go.mod replaces
# every staging module with ./staging/src/k8s.io/X, which a dependent module cannot use; each is published as
# k8s.io/X v0.N.P, which the wrapper names instead.
kubernetes_module() {
  cat > go.mod <<MOD
module tollgate.local/kubernetes-binaries

go 1.24

require k8s.io/kubernetes $K8S_VERSION
MOD
  local gomod staging="v0.${K8S_VERSION#v1.}"   # v1.36.3 -> v0.36.3
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
  grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk '{print $1}' | sort -u | while read -r module; do
    echo "replace $module => $module $staging" >> go.mod
  done
}

# The -ldflags that give the binaries their version, as Kubernetes' own build does (the API server reports it,
# and tollgate's safe sysctls follow it).
kubernetes_ldflags() {
  local date minor=${K8S_VERSION#v1.}
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  minor=${minor%%.*}
  echo "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=$date" \
    "-X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
}
