package reconcile

import (
	"github.com/livegate/livegate/edgeproxy/internal/desired"
	"github.com/livegate/livegate/edgeproxy/internal/placement"
	"github.com/prometheus/client_golang/prometheus"
)

// Error kinds counted by livegate_edge_errors_total.
const (
	ErrKindHAProxy   = "haproxy"
	ErrKindMedia     = "media"
	ErrKindKV        = "kv"
	ErrKindMapFile   = "map_file"
	ErrKindEvents    = "events"
	ErrKindRefused   = "route_refused"
	ErrKindHeartbeat = "heartbeat"
)

// Reasons counted by livegate_edge_routes_removed_total.
const (
	RemovedDeleted    = desired.RemovedDeleted
	RemovedExpired    = desired.RemovedExpired
	RemovedRefused    = desired.RemovedRefused
	RemovedReassigned = desired.RemovedReassigned
	RemovedDrained    = desired.RemovedDrained
)

// Metrics are the edge's Prometheus metrics.
type Metrics struct {
	routes  prometheus.Gauge
	latency prometheus.Histogram
	errors  *prometheus.CounterVec
	drift   prometheus.Counter
	claims  *prometheus.CounterVec
	removed *prometheus.CounterVec
	// conflicts counts routes refused because another instance holds their session id.
	conflicts prometheus.Counter
	// draining, drainDeadline and claiming are this edge's drain state and whether it takes new
	// pool routes, as its last heartbeat said.
	draining, drainDeadline, claiming prometheus.Gauge
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		routes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "livegate_edge_routes_programmed", Help: "Routes this edge has programmed into HAProxy.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "livegate_edge_programming_seconds",
			Help:    "Time from seeing a route change in KV to having it programmed.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "livegate_edge_errors_total", Help: "Errors by kind.",
		}, []string{"kind"}),
		drift: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "livegate_edge_drift_repaired_total", Help: "HAProxy map entries found wrong on a resync and repaired.",
		}),
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "livegate_edge_claims_total", Help: "Pool route claims by result (won, lost).",
		}, []string{"result"}),
		removed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "livegate_edge_routes_removed_total",
			Help: "Routes this edge stopped serving, by reason (deleted, expired: its lease ran out, refused, reassigned: another edge serves it, drained: handed to the pool at the drain deadline).",
		}, []string{"reason"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "livegate_edge_session_conflicts_total",
			Help: "Routes refused because another instance holds their session id (once per change of the route).",
		}),
		draining: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "livegate_edge_draining", Help: "1 while this edge drains: it takes no new session.",
		}),
		drainDeadline: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "livegate_edge_drain_deadline_seconds", Help: "Unix time at which a draining edge hands its pool routes to the pool's other edges; 0 when none.",
		}),
		claiming: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "livegate_edge_claiming", Help: "1 while this edge takes new pool routes: not draining, and more free media ports than its reserve.",
		}),
	}
	for _, k := range []string{ErrKindHAProxy, ErrKindMedia, ErrKindKV, ErrKindMapFile, ErrKindEvents, ErrKindRefused, ErrKindHeartbeat} {
		m.errors.WithLabelValues(k)
	}
	for _, r := range []string{RemovedDeleted, RemovedExpired, RemovedRefused, RemovedReassigned, RemovedDrained} {
		m.removed.WithLabelValues(r)
	}
	reg.MustRegister(m.routes, m.latency, m.errors, m.drift, m.claims, m.removed, m.conflicts, m.draining, m.drainDeadline, m.claiming)
	return m
}

func (m *Metrics) observeDrain(d placement.Drain, claiming bool) {
	m.draining.Set(bool01(d.Draining))
	m.claiming.Set(bool01(claiming))
	deadline := 0.0
	if !d.Deadline.IsZero() {
		deadline = float64(d.Deadline.Unix())
	}
	m.drainDeadline.Set(deadline)
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
