#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, with tollgate installed from its Helm chart.
#
#   scripts/cluster.sh up            start it (prints export lines for KUBECONFIG, TOLLGATE_NODE_IP, ...)
#   scripts/cluster.sh down          stop everything it started and leave the host as it was
#   scripts/cluster.sh load ARCHIVE  import OCI image archives into the node (like `kind load image-archive`)
#   scripts/cluster.sh status        say whether it runs
#   scripts/cluster.sh check         say whether this machine can run a node (root, cgroups, namespaces)
#
# What runs: etcd, kube-apiserver, kube-controller-manager, kube-scheduler on the host; containerd, kubelet,
# kube-proxy (nftables mode) and kube-router (its network policy controller only: NetworkPolicies are
# enforced) in a mount namespace of their own, so that what they write — /run, /var/lib, /var/log, the sysctls
# kubelet sets — never reaches the host; CoreDNS as a pod (kube-system/kube-dns, 10.96.0.10), so pods resolve
# Service names. Pods live on a bridge this script creates (tollgate0, 10.88.0.0/24; the node's address is its
# gateway, 10.88.0.1, where host-side stand-ins listen for pods too); the bridge alone hands its frames to
# netfilter (its nf_call_iptables option, not the host-wide sysctl), where kube-router's filter rules judge
# them. No NAT, no forwarding but on the bridge itself: traffic stays on loopback, the bridge and the pods'
# network namespaces. `down` kills by PID, removes the node's cgroups, the bridge, kube-proxy's nftables
# tables, the iptables tables and ipsets kube-router made (those the host did not have before `up`) and the
# state directory.
#
# Needs root on a Linux host or VM with cgroups (v1 or v2) and overlayfs — not a container. Binaries come
# from tests/control-plane/provision.sh and tests/node/provision.sh (built from the Go module proxy the first
# time, then cached); tollgate's images are assembled from the workspace's release binaries.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${TOLLGATE_CLUSTER_DIR:-/tmp/tollgate-cluster}
BRIDGE=tollgate0
NODE_IP=10.88.0.1
POD_CIDR=10.88.0.0/24
SERVICE_CIDR=10.96.0.0/24
KUBERNETES_SERVICE_IP=10.96.0.1
CLUSTER_DNS_IP=10.96.0.10
NODE_NAME=tollgate-node
ETCD_PORT=12379
APISERVER_PORT=6443
ANALYSIS_NAMESPACE=${TOLLGATE_ANALYSIS_NAMESPACE:-analyses}
PAUSE_IMAGE=localhost/tollgate/pause:0.1.0
COREDNS_IMAGE=localhost/tollgate/coredns:0.1.0
# The node's images for tests (tests/src/images.rs TEST_IMAGES), built beside tollgate's.
TEST_IMAGES=(coredns flame-standins flame-analysis)
# Sysctls kubelet, kube-proxy and the CNI plugins would write: inside the node's mount namespace each is a
# file bind-mounted over the real one, so the host's values never change.
SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys
  kernel/keys/root_maxbytes net/ipv4/ip_forward net/ipv6/conf/all/forwarding net/ipv4/conf/all/route_localnet
  net/netfilter/nf_conntrack_max net/netfilter/nf_conntrack_tcp_timeout_established
  net/netfilter/nf_conntrack_tcp_timeout_close_wait net/bridge/bridge-nf-call-iptables)

log() { echo "cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

preflight() {
  [[ $(id -u) == 0 ]] || die "needs root (it creates a bridge, mounts and cgroups); run it on a Linux host or VM"
  [[ -d /sys/fs/cgroup/memory || -f /sys/fs/cgroup/cgroup.controllers ]] || die "no cgroups at /sys/fs/cgroup"
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || die "overlayfs is not available"
  # What a container usually cannot do, and a node must: its own mount namespace, and cgroups of its own.
  unshare --mount --propagation private true 2>/dev/null || die "cannot create a mount namespace (a container?): a node needs a real (virtual) machine"
  local probe=/sys/fs/cgroup/pids/tollgate-probe
  [[ -d /sys/fs/cgroup/pids ]] || probe=/sys/fs/cgroup/tollgate-probe
  mkdir "$probe" 2>/dev/null && rmdir "$probe" || die "cannot create cgroups under /sys/fs/cgroup (a container?): a node needs a real (virtual) machine"
  local free_mib
  free_mib=$(df --output=avail -m "$(dirname "$STATE")" | tail -1)
  ((free_mib >= 2048)) || die "only ${free_mib} MiB free under $(dirname "$STATE"); the node needs 2 GiB for images and pods"
}

# What a failed install leaves to read: why the node would not run a pod, and what each pod said.
explain_failure() {
  log "what the cluster shows:"
  kubectl get nodes -o wide >&2 || true
  kubectl get node "$NODE_NAME" -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.message}{"\n"}{end}' >&2 || true
  kubectl get jobs,pods -n tollgate -o wide >&2 || true
  kubectl get events -n tollgate --sort-by=.lastTimestamp >&2 || true
  kubectl logs -n tollgate job/tollgate-certs-secrets --all-containers --tail=40 >&2 || true
  kubectl logs -n tollgate job/tollgate-certs --all-containers --tail=40 >&2 || true
  df -h "$(dirname "$STATE")" >&2 || true
  tail -20 "$STATE/logs/kubelet.log" >&2 || true
}

pid_of() { cat "$STATE/pids/$1" 2>/dev/null || true; }
running() { local pid; pid=$(pid_of "$1"); [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; }

# Wait until `$@` succeeds, at most $WAIT seconds (default 60), saying what for.
wait_for() {
  local what=$1; shift
  local deadline=$((SECONDS + ${WAIT:-60}))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "timed out waiting for $what"; return 1; }
    sleep 0.2
  done
}

kubectl() { "$BIN/kubectl" --kubeconfig="$STATE/admin.kubeconfig" "$@"; }

# ---- certificates -------------------------------------------------------------------------------------

cert() { # name subject sans(comma list, or "") usage
  local name=$1 subject=$2 sans=$3 usage=$4 dir=$STATE/pki
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/$name.key" \
    -out "$dir/$name.csr" -subj "$subject" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -n $sans ]] && echo "subjectAltName=$sans"
  } > "$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 7 \
    -extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}

kubeconfig() { # file user cert-name
  cat > "$STATE/$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tollgate
  cluster: { server: "https://$NODE_IP:$APISERVER_PORT", certificate-authority: "$STATE/pki/ca.crt" }
users:
- name: $2
  user: { client-certificate: "$STATE/pki/$3.crt", client-key: "$STATE/pki/$3.key" }
contexts:
- name: tollgate
  context: { cluster: tollgate, user: $2 }
current-context: tollgate
EOF
}

make_pki() {
  mkdir -p "$STATE/pki"
  local dir=$STATE/pki
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/ca.key" \
    -out "$dir/ca.crt" -days 7 -subj "/CN=tollgate-cluster-ca" 2>/dev/null
  cert apiserver "/CN=kube-apiserver" "IP:$NODE_IP,IP:$KUBERNETES_SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" serverAuth
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "" clientAuth
  cert admin "/O=system:masters/CN=admin" "" clientAuth
  cert controller-manager "/CN=system:kube-controller-manager" "" clientAuth
  cert scheduler "/CN=system:kube-scheduler" "" clientAuth
  cert kube-proxy "/CN=system:kube-proxy" "" clientAuth
  cert kube-router "/CN=kube-router" "" clientAuth
  cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "" clientAuth
  cert kubelet-serving "/CN=$NODE_NAME" "IP:$NODE_IP,DNS:$NODE_NAME" serverAuth
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/sa.key" 2>/dev/null
  openssl ec -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  kubeconfig admin.kubeconfig admin admin
  kubeconfig controller-manager.kubeconfig system:kube-controller-manager controller-manager
  kubeconfig scheduler.kubeconfig system:kube-scheduler scheduler
  kubeconfig kube-proxy.kubeconfig system:kube-proxy kube-proxy
  kubeconfig kube-router.kubeconfig kube-router kube-router
  kubeconfig kubelet.kubeconfig "system:node:$NODE_NAME" kubelet
}

# ---- the control plane (host) ---------------------------------------------------------------------------

start() { # name log-name command...
  local name=$1; shift
  setsid "$@" > "$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pids/$name"
}

start_control_plane() {
  start etcd "$BIN/etcd" --data-dir="$STATE/etcd" --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" --listen-peer-urls="http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls="http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster="default=http://127.0.0.1:$((ETCD_PORT + 1))" --unsafe-no-fsync --log-level=warn
  local pki=$STATE/pki
  # --enable-aggregator-routing: the API server resolves a Service to its endpoints itself — for the webhook
  # behind its Service — so the host's netfilter is not needed for that direction.
  start kube-apiserver "$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$APISERVER_PORT" \
    --cert-dir="$STATE/apiserver-certs" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --enable-aggregator-routing=true \
    --service-account-issuer="https://kubernetes.default.svc" --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" --kubelet-certificate-authority="$pki/ca.crt" \
    --kubelet-preferred-address-types=InternalIP --v=0
  WAIT=90 wait_for "kube-apiserver" kubectl get --raw /readyz || { tail -20 "$STATE/logs/kube-apiserver.log" >&2; return 1; }
  start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$STATE/controller-manager.kubeconfig" \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" --use-service-account-credentials=true \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --controllers='*,-nodeipam' \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" --v=0
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$STATE/scheduler.kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=0 --v=0
}

# ---- the node (its own mount namespace) -------------------------------------------------------------------

write_node_config() {
  mkdir -p "$STATE/cni/net.d" "$STATE/cni/bin" "$STATE/containerd" "$STATE/kubelet" "$STATE/sysctl" "$STATE/varlib/upper" "$STATE/varlib/work"
  cat > "$STATE/containerd.toml" <<EOF
version = 3
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
[grpc]
  address = "$STATE/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins.'io.containerd.cri.v1.runtime']
  # This machine's capability bounding set lacks CAP_SYS_RESOURCE: no oom_score_adj below the caller's.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "$(command -v runc)"
      SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    # The second is where the tollgate-cni DaemonSet installs the egress lock's plugin.
    bin_dirs = ["/usr/lib/cni", "$STATE/cni/bin"]
    conf_dir = "$STATE/cni/net.d"
EOF
  # isGateway false, no masquerade, no forwarding: the node's address is on the bridge already, and pods
  # route everything through it (Service addresses reach kube-proxy's rules on the host that way).
  cat > "$STATE/cni/net.d/10-tollgate.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "tollgate", "plugins": [{"type": "bridge", "bridge": "$BRIDGE", "isGateway": false,
 "ipMasq": false, "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam",
 "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "10.88.0.10", "gateway": "$NODE_IP"}]],
 "routes": [{"dst": "0.0.0.0/0", "gw": "$NODE_IP"}]}}]}
EOF
  printf 'nameserver %s\noptions ndots:1 timeout:1 attempts:1\n' "$NODE_IP" > "$STATE/resolv.conf"
  cat > "$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: true
failSwapOn: false
containerRuntimeEndpoint: unix://$STATE/containerd.sock
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzPort: 0
tlsCertFile: $STATE/pki/kubelet-serving.crt
tlsPrivateKeyFile: $STATE/pki/kubelet-serving.key
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: false }
  x509: { clientCAFile: $STATE/pki/ca.crt }
authorization: { mode: AlwaysAllow }
resolvConf: $STATE/resolv.conf
clusterDNS: [$CLUSTER_DNS_IP]
podLogsDir: $STATE/pod-logs
clusterDomain: cluster.local
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Absolute and small: this machine's disk is shared and its free space swings by tens of GiB, and a node
# under DiskPressure admits no pod at all (a CI run lost its certs Job to a timeout with the disk nearly full).
evictionHard: { memory.available: "100Mi", nodefs.available: "256Mi", imagefs.available: "256Mi" }
serializeImagePulls: false
shutdownGracePeriod: 0s
EOF
  cat > "$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: ""
metricsBindAddress: ""
clientConnection: { kubeconfig: $STATE/kube-proxy.kubeconfig }
conntrack: { maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s }
EOF
  # Runs inside the node's mount namespace: hide what the node writes from the host, then start it.
  cat > "$STATE/node.sh" <<EOF
#!/usr/bin/env bash
set -euo pipefail
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/log
mount -t overlay overlay -o lowerdir=/var/lib,upperdir=$STATE/varlib/upper,workdir=$STATE/varlib/work /var/lib
for key in ${SYSCTLS[*]}; do
  [[ -e /proc/sys/\$key ]] || continue
  mkdir -p "$STATE/sysctl/\$(dirname \$key)"
  cat /proc/sys/\$key > "$STATE/sysctl/\$key"
  mount --bind "$STATE/sysctl/\$key" /proc/sys/\$key
done
# kubelet still touches iptables; only kube-proxy's own nftables table may change the host's netfilter.
for tool in iptables ip6tables iptables-save ip6tables-save iptables-restore ip6tables-restore; do
  path=\$(command -v \$tool || true)
  [[ -n \$path ]] && mount --bind /bin/true "\$(readlink -f \$path)" 2>/dev/null || true
done
export PATH="$BIN:\$PATH"
"$BIN/containerd" --config "$STATE/containerd.toml" > "$STATE/logs/containerd.log" 2>&1 &
echo \$! > "$STATE/pids/containerd"
for _ in \$(seq 100); do [[ -S "$STATE/containerd.sock" ]] && break; sleep 0.1; done
"$BIN/kubelet" --config="$STATE/kubelet.yaml" --kubeconfig="$STATE/kubelet.kubeconfig" --root-dir="$STATE/kubelet" \
  --hostname-override=$NODE_NAME --node-ip=$NODE_IP --v=1 > "$STATE/logs/kubelet.log" 2>&1 &
echo \$! > "$STATE/pids/kubelet"
"$BIN/kube-proxy" --config="$STATE/kube-proxy.yaml" --v=1 > "$STATE/logs/kube-proxy.log" 2>&1 &
echo \$! > "$STATE/pids/kube-proxy"
wait
EOF
  chmod +x "$STATE/node.sh"
  # kube-router's own iptables: the node's mount namespace hides the real ones behind /bin/true (for kubelet),
  # so kube-router gets a copy of the multi-call binary, with the names it runs it by, on its PATH.
  mkdir -p "$STATE/netpol-bin"
  local real
  real=$(readlink -f "$(command -v iptables)") || die "no iptables (tests/node/provision.sh installs it)"
  cp "$real" "$STATE/netpol-bin/"
  for tool in iptables iptables-save iptables-restore; do ln -sfn "$(basename "$real")" "$STATE/netpol-bin/$tool"; done
}

start_node() {
  # nf_call_iptables on this bridge only: its bridged frames (pod to pod) pass the iptables FORWARD hook,
  # where kube-router enforces NetworkPolicies, whatever the host's net.bridge.bridge-nf-call-iptables says.
  ip link add "$BRIDGE" type bridge nf_call_iptables 1
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Forwarding on this bridge only (the host's net.ipv4.ip_forward stays as it is; the setting goes with the
  # bridge): br_netfilter hands a frame kube-proxy DNATed to a pod on this same bridge (a pod calling a Service)
  # back to the bridge only when the route lookup for its new address succeeds, which it does not on an
  # interface that may not forward.
  echo 1 > "/proc/sys/net/ipv4/conf/$BRIDGE/forwarding"
  write_node_config
  setsid unshare --mount --propagation private -- "$STATE/node.sh" > "$STATE/logs/node.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pids/node"
  wait_for "containerd" test -S "$STATE/containerd.sock" || { cat "$STATE/logs/node.log" "$STATE/logs/containerd.log" >&2; return 1; }
}

# ---- NetworkPolicies (kube-router) and cluster DNS (CoreDNS) -----------------------------------------------

# What the host had before `up` in the places kube-router writes to: `down` removes only what is new.
record_netfilter() {
  mkdir -p "$STATE/host-before"
  { nft list tables 2>/dev/null || true; } > "$STATE/host-before/nft-tables"
  { command -v ipset >/dev/null && ipset list -n 2>/dev/null || true; } > "$STATE/host-before/ipsets"
}

# kube-router's network policy controller, alone (no routing, no service proxy: kube-proxy and the bridge do
# those), in the node's mount namespace, with its own identity and read-only rights.
start_netpol() {
  kubectl apply -f - >&2 <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: kube-router }
rules:
  - apiGroups: [""]
    resources: [pods, namespaces, nodes, services, endpoints]
    verbs: [get, list, watch]
  - apiGroups: [networking.k8s.io]
    resources: [networkpolicies]
    verbs: [get, list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: kube-router }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kube-router }
subjects: [{ apiGroup: rbac.authorization.k8s.io, kind: User, name: kube-router }]
EOF
  setsid nsenter --target "$(pid_of node)" --mount -- env PATH="$STATE/netpol-bin:$PATH" "$BIN/kube-router" \
    --kubeconfig="$STATE/kube-router.kubeconfig" --hostname-override="$NODE_NAME" \
    --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
    --enable-ipv4=true --enable-ipv6=false --service-cluster-ip-range="$SERVICE_CIDR" \
    --health-port=0 --metrics-port=0 --iptables-sync-period=5m --v=1 \
    > "$STATE/logs/kube-router.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pids/kube-router"
  # Its first full sync made the chains every pod's traffic passes.
  WAIT=60 wait_for "kube-router's NetworkPolicy chains" iptables -t filter -S KUBE-ROUTER-FORWARD ||
    { tail -30 "$STATE/logs/kube-router.log" >&2; return 1; }
}

# Undo what kube-router did to the host's netfilter: its jumps and chains, the tables iptables-nft created for
# them (unless the host had them), its ipsets (unless the host had them).
stop_netpol() {
  local before=$STATE/host-before
  [[ -f $before/nft-tables ]] || return 0
  local family table
  for family in ip ip6; do
    for table in filter nat mangle raw; do
      nft list table "$family" "$table" >/dev/null 2>&1 || continue
      if ! grep -qx "table $family $table" "$before/nft-tables"; then
        nft delete table "$family" "$table" 2>/dev/null || true
        continue
      fi
      # A table the host had: only kube-router's jumps and chains go.
      local save=iptables-save tool=iptables chains chain
      [[ $family == ip6 ]] && { save=ip6tables-save; tool=ip6tables; }
      "$save" -t "$table" | grep -E '^-A [A-Z]+ .*-j KUBE-(ROUTER|NWPLCY|POD-FW)' | sed 's/^-A /-D /' |
        while read -r rule; do eval "$tool -t $table $rule" || true; done
      chains=$("$save" -t "$table" | sed -n 's/^:\(KUBE-\(ROUTER\|NWPLCY\|POD-FW\)[^ ]*\) .*/\1/p')
      for chain in $chains; do "$tool" -t "$table" -F "$chain" 2>/dev/null || true; done
      for chain in $chains; do "$tool" -t "$table" -X "$chain" 2>/dev/null || true; done
    done
  done
  if command -v ipset >/dev/null; then
    local set
    for set in $(ipset list -n 2>/dev/null); do
      grep -qx -- "$set" "$before/ipsets" || ipset destroy "$set" 2>/dev/null || true
    done
  fi
}

# CoreDNS as a pod, as clusters run it: kube-system, labels k8s-app=kube-dns (what NetworkPolicies admitting DNS
# select), Service kube-dns at the address kubelet gives pods as their nameserver. Port 53 as a non-root user:
# the pod lowers net.ipv4.ip_unprivileged_port_start (a safe sysctl) instead of adding a capability.
start_dns() {
  kubectl apply -f - >&2 <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: { name: coredns, namespace: kube-system }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: "system:coredns" }
rules:
  - apiGroups: [""]
    resources: [services, pods, namespaces, endpoints]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: "system:coredns" }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns" }
subjects: [{ kind: ServiceAccount, name: coredns, namespace: kube-system }]
---
apiVersion: v1
kind: ConfigMap
metadata: { name: coredns, namespace: kube-system }
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
        }
        cache 5
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: coredns, namespace: kube-system, labels: { k8s-app: kube-dns } }
spec:
  replicas: 1
  selector: { matchLabels: { k8s-app: kube-dns } }
  template:
    metadata: { labels: { k8s-app: kube-dns } }
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: { type: RuntimeDefault }
        sysctls: [{ name: net.ipv4.ip_unprivileged_port_start, value: "53" }]
      containers:
        - name: coredns
          image: $COREDNS_IMAGE
          imagePullPolicy: Never
          args: [-conf, /etc/coredns/Corefile]
          ports:
            - { name: dns, containerPort: 53, protocol: UDP }
            - { name: dns-tcp, containerPort: 53, protocol: TCP }
          readinessProbe: { httpGet: { path: /ready, port: 8181 }, periodSeconds: 2 }
          securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: [ALL] } }
          volumeMounts: [{ name: config, mountPath: /etc/coredns, readOnly: true }]
      volumes: [{ name: config, configMap: { name: coredns } }]
---
apiVersion: v1
kind: Service
metadata: { name: kube-dns, namespace: kube-system, labels: { k8s-app: kube-dns } }
spec:
  clusterIP: $CLUSTER_DNS_IP
  selector: { k8s-app: kube-dns }
  ports:
    - { name: dns, port: 53, protocol: UDP, targetPort: 53 }
    - { name: dns-tcp, port: 53, protocol: TCP, targetPort: 53 }
EOF
  WAIT=90 wait_for "CoreDNS ready" kubectl rollout status deployment/coredns -n kube-system --timeout=2s ||
    { kubectl get pods -n kube-system -o wide >&2; return 1; }
}

ctr() { "$BIN/ctr" --address "$STATE/containerd.sock" -n k8s.io "$@"; }

load() {
  local archive
  for archive in "$@"; do
    [[ -f $archive ]] || die "$archive: no such file"
    ctr images import --no-unpack=false "$archive" >&2 || die "importing $archive failed"
  done
}

build_images() {
  log "building release binaries and images"
  (cd "$ROOT" && cargo build --release --locked -q --workspace)
  # As docker/Dockerfile builds it: the CNI plugin runs on the node against the node's glibc, so it is static.
  local host
  host=$(rustc -vV | sed -n 's/^host: //p')
  (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -q -p tollgate-cni --target "$host")
  mkdir -p "$STATE/release"
  cp "$ROOT"/target/release/tollgate{-webhook,-proxy,-certs,-pause,-example-analysis,} "$ROOT/target/release/flame_standins" "$ROOT/target/$host/release/tollgate-cni" "$STATE/release/"
  cp "$BIN/coredns" "$STATE/release/coredns"
  "$ROOT/target/release/tollgate-images" build --release-dir "$STATE/release" --out "$STATE/images" > "$STATE/images.list"
  "$ROOT/target/release/tollgate-images" build --release-dir "$STATE/release" --out "$STATE/images" "${TEST_IMAGES[@]}" >> "$STATE/images.list"
}

# ---- tollgate, installed as a user would ------------------------------------------------------------------

install_tollgate() {
  log "installing tollgate with the Helm chart (selfSigned certificates)"
  { echo "proxyConfig:"; sed 's/^/  /' "$STATE/proxy-config.yaml"; } > "$STATE/values.yaml"
  # --wait, as GitOps controllers wait: the certificates' Secrets come from a pre-install hook, so the
  # webhook's pods can start, and helm returns once they and the egress lock's DaemonSet are ready.
  HELM_CACHE_HOME=$STATE/helm/cache HELM_CONFIG_HOME=$STATE/helm/config HELM_DATA_HOME=$STATE/helm/data \
    "$BIN/helm" --kubeconfig="$STATE/admin.kubeconfig" install tollgate "$ROOT/charts/tollgate" -n tollgate \
    --create-namespace --wait --timeout 180s --values "$STATE/values.yaml" \
    --set "analysisNamespaces[0].name=$ANALYSIS_NAMESPACE" \
    --set egressLock.enabled=true --set "egressLock.binDir=$STATE/cni/bin" --set "egressLock.confDir=$STATE/cni/net.d" \
    --set webhook.events.enabled=true \
    ${TOLLGATE_HELM_ARGS:-} >&2 || { explain_failure; return 1; }
}

prepare_analysis_namespace() {
  kubectl label namespace "$ANALYSIS_NAMESPACE" tollgate.dev/inject=enabled --overwrite >&2
  kubectl create secret generic tollgate-proxy-credentials -n "$ANALYSIS_NAMESPACE" \
    --from-literal=client-id=analysis-client --from-literal=client-secret=analysis-secret >&2
  # The host-side stand-ins are outside the cluster: the admin admits their address beside the chart's
  # closing policy (NetworkPolicies add up), as one would a data source outside the cluster.
  kubectl apply -f - >&2 <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: host-standins, namespace: $ANALYSIS_NAMESPACE }
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to: [{ ipBlock: { cidr: $NODE_IP/32 } }]
      ports: [{ port: 18080 }, { port: 18081 }, { port: 18082 }, { port: 18083 }]
EOF
}

start_standins() {
  start standins "$ROOT/target/release/tollgate-standins" --listen "$NODE_IP" --log "$STATE/standins.jsonl"
  "$ROOT/target/release/tollgate-standins" --listen "$NODE_IP" --print-config > "$STATE/proxy-config.yaml"
}

up() {
  preflight
  if running kube-apiserver; then die "already up (state in $STATE); run '$0 down' first"; fi
  local started=$SECONDS
  BIN=$("$ROOT/tests/control-plane/provision.sh")
  "$ROOT/tests/node/provision.sh" > /dev/null
  rm -rf "$STATE"
  mkdir -p "$STATE/pids" "$STATE/logs"
  echo "$BIN" > "$STATE/bin"
  record_netfilter
  build_images
  local built=$SECONDS
  make_pki
  start_node
  load $(cat "$STATE/images.list")
  start_control_plane
  WAIT=60 wait_for "node $NODE_NAME Ready" kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s ||
    { tail -30 "$STATE/logs/kubelet.log" >&2; return 1; }
  start_netpol
  start_dns
  kubectl create namespace "$ANALYSIS_NAMESPACE" >&2
  start_standins
  install_tollgate
  prepare_analysis_namespace
  log "up in $((SECONDS - started)) s ($((SECONDS - built)) s after building)"
  cat <<EOF
export KUBECONFIG=$STATE/admin.kubeconfig
export TOLLGATE_NODE_IP=$NODE_IP
export TOLLGATE_ANALYSIS_NAMESPACE=$ANALYSIS_NAMESPACE
export TOLLGATE_CLUSTER_DIR=$STATE
EOF
}

# Every process of the node's pods: the shims (started by containerd, re-parented to init) and what runs in
# the pods' cgroups.
kill_pods() {
  pkill -9 -f "containerd-shim-runc-v2[^ ]* .*-address $STATE/containerd.sock" 2>/dev/null || true
  local cgroup
  for cgroup in $(find /sys/fs/cgroup -type d -name 'kubepods*' -prune 2>/dev/null); do
    find "$cgroup" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  done
}

remove_cgroups() {
  local dir
  for dir in $(find /sys/fs/cgroup -type d -name 'kubepods*' -prune 2>/dev/null); do
    find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

down() {
  [[ $(id -u) == 0 ]] || die "needs root"
  [[ -d $STATE ]] || { log "nothing to stop ($STATE does not exist)"; return 0; }
  local name pid
  for name in standins kube-router kube-scheduler kube-controller-manager kube-proxy kubelet; do
    pid=$(pid_of "$name"); [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null || true
  done
  sleep 1
  kill_pods
  for name in containerd node kube-apiserver etcd standins kube-router kube-scheduler kube-controller-manager kube-proxy kubelet; do
    pid=$(pid_of "$name"); [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null || true
  done
  for _ in $(seq 50); do
    local alive=0
    for name in containerd kubelet kube-proxy kube-router node kube-apiserver etcd; do running "$name" && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  kill_pods
  remove_cgroups
  if command -v nft >/dev/null; then
    nft delete table ip kube-proxy 2>/dev/null || true
    nft delete table ip6 kube-proxy 2>/dev/null || true
  fi
  stop_netpol
  # The pods' veths go with their network namespaces, which the kernel frees asynchronously (seconds, with many
  # pods): remove the ones still on the bridge now, so nothing of the node outlives `down`.
  local port
  for port in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$port" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$STATE"
  log "down; the host is as it was"
}

status() {
  if running kube-apiserver; then
    echo "up (state in $STATE)"
    BIN=$(cat "$STATE/bin"); kubectl get nodes
  else
    echo "down"
    return 1
  fi
}

case ${1:-} in
  up) up ;;
  down) down ;;
  load) shift; [[ -d $STATE ]] || die "not up"; BIN=$(cat "$STATE/bin"); load "$@" ;;
  status) status ;;
  check) preflight; log "this machine can run a node" ;;
 *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
