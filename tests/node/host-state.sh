#!/usr/bin/env bash
# A fingerprint of what a node could change on this host: the sysctls kubelet, kube-proxy and the CNI
# plugins write, the netfilter rules and address sets (kube-router's), the network links, the mounts, and the
# directories a node writes to.
# scripts/test.sh compares it before `cluster.sh up` and after `cluster.sh down`: they must be equal.
set -uo pipefail
for key in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys \
  kernel/keys/root_maxbytes net/ipv4/ip_forward net/ipv6/conf/all/forwarding net/ipv4/conf/all/route_localnet \
  net/netfilter/nf_conntrack_max net/bridge/bridge-nf-call-iptables; do
  [[ -e /proc/sys/$key ]] && echo "sysctl $key=$(cat /proc/sys/$key)"
done
echo "--- nft"; nft list ruleset 2>/dev/null
echo "--- iptables"; iptables-save 2>/dev/null | grep -v '^#'; ip6tables-save 2>/dev/null | grep -v '^#'
echo "--- ipsets"; ipset list -n 2>/dev/null | sort
echo "--- links"; ip -o link show | awk -F': ' '{print $2}' | sort
echo "--- mounts"; awk '{print $2, $3}' /proc/self/mounts | sort
echo "--- directories"
for dir in /var/lib/kubelet /var/lib/containerd /var/lib/cni /etc/cni /run/containerd /run/netns /var/log/pods /var/log/containers /opt/cni; do
  [[ -e $dir ]] && echo "exists: $dir"
done
echo "--- cgroups"; find /sys/fs/cgroup -maxdepth 2 -type d -name 'kubepods*' 2>/dev/null | sort
