package reconcile

import (
	"context"

	"github.com/livegate/livegate/edgeproxy/internal/desired"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/logging"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// report logs, counts and emits the core's events.
func (r *Reconciler) report(evs []desired.Event) {
	for _, ev := range evs {
		switch ev.Kind {
		case desired.Refused:
			r.d.Metrics.errors.WithLabelValues(ErrKindRefused).Inc()
			// The key may be hostile: zerolog quotes it, and it goes no further.
			r.log.Warn().Str("instance_id", logging.Clip(ev.Key)).Uint64("revision", ev.Revision).Str("reason", ev.Reason).Msg("route refused")
			r.emit(&livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED, InstanceId: ev.Key, SessionId: ev.Session, Pool: ev.Pool,
				Details: &livegatev1.Event_RouteRefused{RouteRefused: &livegatev1.RouteRefused{EdgeId: r.cfg.EdgeID, Reason: ev.Reason}}})
		case desired.Removed:
			r.d.Metrics.removed.WithLabelValues(ev.RemovedAs).Inc()
			r.log.Info().Str("instance_id", ev.Key).Str("session_id", ev.Session).Str("reason", ev.Reason).Msg("route removed")
			r.emit(&livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REMOVED, InstanceId: ev.Key, SessionId: ev.Session, Pool: ev.Pool,
				Details: &livegatev1.Event_RouteRemoved{RouteRemoved: &livegatev1.RouteRemoved{EdgeId: r.cfg.EdgeID, Reason: ev.Reason}}})
		case desired.Programmed:
			if ev.HasLatency {
				r.d.Metrics.latency.Observe(ev.Latency.Seconds())
			}
			r.log.Info().Str("instance_id", ev.Key).Str("session_id", ev.Session).Str("backend", ev.Backend).
				Any("public_udp_ports", ev.Ports).Dur("latency", ev.Latency).Msg("route programmed")
			r.emit(&livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED, InstanceId: ev.Key, SessionId: ev.Session, Pool: ev.Pool,
				Details: &livegatev1.Event_RouteProgrammed{RouteProgrammed: &livegatev1.RouteProgrammed{EdgeId: r.cfg.EdgeID, Latency: durationpb.New(ev.Latency)}}})
		}
	}
}

// emit queues ev; pool defaults to this edge's. Events about keys that cannot name a subject
// (hostile ones) are only logged.
func (r *Reconciler) emit(ev *livegatev1.Event) {
	if r.d.Events == nil || events.ValidateToken("instance id", ev.InstanceId) != nil {
		return
	}
	if ev.Pool == "" {
		ev.Pool = r.cfg.Pool
	}
	select {
	case r.evq <- ev:
	default:
		r.d.Metrics.errors.WithLabelValues(ErrKindEvents).Inc()
	}
}

// deliverEvents sends events off the loop's goroutine, so a slow stream never delays routing.
func (r *Reconciler) deliverEvents(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-r.evq:
			err := r.d.Events.Deliver(ctx, ev)
			if err != nil && ctx.Err() == nil {
				r.d.Metrics.errors.WithLabelValues(ErrKindEvents).Inc()
				r.log.Warn().Err(err).Str("instance_id", ev.InstanceId).Msg("event publish failed")
			}
		}
	}
}
