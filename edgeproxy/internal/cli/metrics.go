package cli

import (
	"github.com/livegate/livegate/edgeproxy/internal/media"
	"github.com/livegate/livegate/pkg/buildinfo"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// portUsage is what a kernel media plane reports about its public ports.
type portUsage interface {
	Usage() (inUse, quarantined, free int)
}

// conntrackDeletions is what a kernel media plane reports about its conntrack deletions.
type conntrackDeletions interface {
	ConntrackDeletions() (all, byFilter int64)
}

// registerProcessMetrics adds the edge's metrics that are read from its parts at scrape time
// rather than counted by the reconcile loop: the build, the NATS connection, the media port pool
// and the media plane's conntrack deletions.
func registerProcessMetrics(reg prometheus.Registerer, nc *nats.Conn, plane media.Plane) {
	reg.MustRegister(
		buildinfo.Collector("livegate-edgeproxy"),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "livegate_edge_nats_connected", Help: "1 while connected to NATS."},
			func() float64 {
				if nc.IsConnected() {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "livegate_edge_nats_reconnects_total", Help: "Reconnections to NATS since start."},
			func() float64 { return float64(nc.Stats().Reconnects) }),
	)
	if cd, ok := plane.(conntrackDeletions); ok {
		reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "livegate_edge_conntrack_deletions_total",
				Help: "Conntrack deletions for changed or ended public ports: one per batch of ports, failed ones and retries included."},
				func() float64 { all, _ := cd.ConntrackDeletions(); return float64(all) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "livegate_edge_conntrack_filter_deletions_total",
				Help: "Of those, the deletions that walked the kernel's conntrack table by filter, because the edge could not be sure it knew every flow from the conntrack events (the log says why)."},
				func() float64 { _, f := cd.ConntrackDeletions(); return float64(f) }),
		)
	}
	pu, ok := plane.(portUsage)
	if !ok {
		return
	}
	port := func(opts prometheus.GaugeOpts, pick func(inUse, quarantined, free int) int) prometheus.Collector {
		return prometheus.NewGaugeFunc(opts, func() float64 { return float64(pick(pu.Usage())) })
	}
	reg.MustRegister(
		port(prometheus.GaugeOpts{Name: "livegate_edge_media_ports_in_use", Help: "Public UDP media ports forwarding to a backend."},
			func(inUse, _, _ int) int { return inUse }),
		port(prometheus.GaugeOpts{Name: "livegate_edge_media_ports_quarantined", Help: "Released public UDP media ports resting before reuse."},
			func(_, quarantined, _ int) int { return quarantined }),
		port(prometheus.GaugeOpts{Name: "livegate_edge_media_ports_free", Help: "Public UDP media ports free to allocate now (not in use, not in quarantine)."},
			func(_, _, free int) int { return free }),
	)
}
