// Package metrics holds the agent's Prometheus collectors, on a registry of their own so tests can
// run many agents in one process.
package metrics

import (
	"github.com/livegate/livegate/pkg/buildinfo"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the agent's collectors. Labels never carry a secret or a session id.
type Metrics struct {
	Registry *prometheus.Registry

	Ready           prometheus.Gauge
	Phase           *prometheus.GaugeVec
	Events          *prometheus.CounterVec
	SessionsEnded   *prometheus.CounterVec
	CredsUpdates    prometheus.Counter
	HTTPRequests    *prometheus.CounterVec
	EventsPending   prometheus.Gauge
	EventsPublished prometheus.Counter
	PublishErrors   prometheus.Counter
	RouteWrites     prometheus.Counter
	RouteErrors     prometheus.Counter
	NATSConnected   prometheus.Gauge
	LeaseRenewals   *prometheus.CounterVec
	RouteRefused    prometheus.Gauge
	RouteRefusals   prometheus.Counter
}

// New registers every collector on a fresh registry, with the Go and process collectors.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{
		Registry: reg,
		Ready: prometheus.NewGauge(prometheus.GaugeOpts{Name: "livegate_agent_ready",
			Help: "1 while /v1/streaming/ready answers 200."}),
		Phase: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "livegate_agent_session_phase",
			Help: "1 for the current session phase."}, []string{"phase"}),
		Events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "livegate_agent_events_total",
			Help: "Lifecycle events emitted, by type."}, []string{"type"}),
		SessionsEnded: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "livegate_agent_sessions_ended_total",
			Help: "Sessions ended, by reason."}, []string{"reason"}),
		CredsUpdates: prometheus.NewCounter(prometheus.CounterOpts{Name: "livegate_agent_credentials_updates_total",
			Help: "Accepted /v1/streaming/creds calls."}),
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "livegate_agent_http_requests_total",
			Help: "HTTP requests answered, by listener, route and status code."}, []string{"api", "route", "code"}),
		EventsPending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "livegate_agent_events_pending",
			Help: "Events waiting for NATS to acknowledge them."}),
		EventsPublished: prometheus.NewCounter(prometheus.CounterOpts{Name: "livegate_agent_events_published_total",
			Help: "Events acknowledged by JetStream."}),
		PublishErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "livegate_agent_event_publish_errors_total",
			Help: "Failed event publish attempts (each is retried)."}),
		RouteWrites: prometheus.NewCounter(prometheus.CounterOpts{Name: "livegate_agent_route_writes_total",
			Help: "Route key writes and renewals acknowledged."}),
		RouteErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "livegate_agent_route_errors_total",
			Help: "Failed route key writes or deletes (each is retried)."}),
		NATSConnected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "livegate_agent_nats_connected",
			Help: "1 while connected to NATS."}),
		LeaseRenewals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "livegate_agent_lease_renewals_total",
			Help: "Renewals of this instance's route key (its lease), by result."}, []string{"result"}),
		RouteRefused: prometheus.NewGauge(prometheus.GaugeOpts{Name: "livegate_agent_route_refused",
			Help: "1 while an edge refuses the current session's route (the reason is in GET /v1/streaming/session and the log)."}),
		RouteRefusals: prometheus.NewCounter(prometheus.CounterOpts{Name: "livegate_agent_route_refusals_total",
			Help: "Refusals of this instance's route reported by edges, each edge and reason counted once per session."}),
	}
	reg.MustRegister(m.Ready, m.Phase, m.Events, m.SessionsEnded, m.CredsUpdates, m.HTTPRequests,
		m.EventsPending, m.EventsPublished, m.PublishErrors, m.RouteWrites, m.RouteErrors, m.NATSConnected, m.LeaseRenewals,
		m.RouteRefused, m.RouteRefusals,
		buildinfo.Collector("livegate-agent"))
	m.LeaseRenewals.WithLabelValues("ok")
	m.LeaseRenewals.WithLabelValues("error")
	return m
}

// WatchNATS adds livegate_agent_nats_reconnects_total, read from the connection's own count.
func (m *Metrics) WatchNATS(nc *nats.Conn) {
	m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "livegate_agent_nats_reconnects_total",
		Help: "Reconnections to NATS since start."}, func() float64 { return float64(nc.Stats().Reconnects) }))
}
