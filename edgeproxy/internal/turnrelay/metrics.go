package turnrelay

import "github.com/prometheus/client_golang/prometheus"

type flow struct{ packets, bytes prometheus.Counter }

type metrics struct {
	allocations      prometheus.Counter
	refusals         *prometheus.CounterVec
	toPeer, fromPeer flow
}

func newMetrics(reg prometheus.Registerer, held func() float64) *metrics {
	packets := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "livegate_edge_turn_relayed_packets_total",
		Help: "Datagrams relayed by the TURN relay, by direction (to_peer: from a client to a session's media)."}, []string{"direction"})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "livegate_edge_turn_relayed_bytes_total",
		Help: "Payload bytes relayed by the TURN relay, by direction."}, []string{"direction"})
	m := &metrics{
		allocations: prometheus.NewCounter(prometheus.CounterOpts{Name: "livegate_edge_turn_allocations_total",
			Help: "TURN allocations made."}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "livegate_edge_turn_refusals_total",
			Help: "TURN requests and relayed datagrams refused, by reason."}, []string{"reason"}),
		toPeer:   flow{packets.WithLabelValues("to_peer"), bytes.WithLabelValues("to_peer")},
		fromPeer: flow{packets.WithLabelValues("from_peer"), bytes.WithLabelValues("from_peer")},
	}
	for _, r := range []string{RefusedMalformed, RefusedExpired, RefusedNotServed, RefusedIntegrity, RefusedPeer, RefusedPeerTraffic, RefusedMismatch} {
		m.refusals.WithLabelValues(r)
	}
	reg.MustRegister(m.allocations, m.refusals, packets, bytes,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "livegate_edge_turn_allocations", Help: "TURN allocations held now."}, held))
	return m
}
