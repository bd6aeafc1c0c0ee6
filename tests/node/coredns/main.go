// CoreDNS with the plugins a cluster DNS needs and nothing else, as CoreDNS documents building with a chosen
// plugin set: a main package that imports them and sets the order they run in. tests/node/provision.sh builds
// it against github.com/coredns/coredns (COREDNS_VERSION); the node runs it as kube-system/coredns.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order plugins run in, as core/dnsserver/zdirectives.go has it for these.
func init() {
	dnsserver.Directives = []string{"errors", "log", "health", "ready", "cache", "kubernetes"}
}

func main() { coremain.Run() }
