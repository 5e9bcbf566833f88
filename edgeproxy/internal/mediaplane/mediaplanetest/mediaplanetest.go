// Package mediaplanetest gives the media plane an in-memory kernel (iptables and the DNAT map),
// for unit tests of what drives a real mediaplane.Plane without root.
package mediaplanetest

import (
	"github.com/livegate/livegate/edgeproxy/internal/iptables/iptablestest"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/internal/dnatmap/dnatmaptest"
)

// Kernel is one in-memory namespace.
type Kernel struct {
	IPTables *iptablestest.Fake
	DNAT     *dnatmaptest.Fake
}

// New returns an empty namespace.
func New() *Kernel {
	return &Kernel{IPTables: iptablestest.New(), DNAT: &dnatmaptest.Fake{}}
}

// Options points a plane at k; add WithConntrack for the conntrack side.
func (k *Kernel) Options() []mediaplane.Option {
	return []mediaplane.Option{mediaplane.WithRunner(k.IPTables), mediaplane.WithDNATMap(k.DNAT)}
}
