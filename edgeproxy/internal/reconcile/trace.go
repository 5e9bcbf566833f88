package reconcile

import (
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/desired"
)

// routeTrace is when a new route passed each step on its way to its endpoint, at log level
// debug: seen by the watch, its pass begun, HAProxy's map programmed, the media plane holding
// its mappings, its endpoint write started. The bench reads the "route timeline" line it ends
// in (e2e/bench/edgebench), so that where a route's time goes is measured, not inferred.
type routeTrace struct {
	seen, pass, mapped, kernel, write time.Time
}

// maxTraces bounds the routes traced at once; past it tracing pauses.
const maxTraces = 1 << 14

// tracePass starts the traces of the routes c serves anew, in the pass begun at began whose
// HAProxy map was programmed at mapped and whose endpoint writes started at published, and notes
// those c reports routable.
func (r *Reconciler) tracePass(c desired.Commit, began, mapped, published time.Time) {
	if r.traces == nil {
		return
	}
	for _, k := range c.Fresh {
		if len(r.traces) < maxTraces {
			r.traces[k] = &routeTrace{pass: began, mapped: mapped}
		}
	}
	for _, ev := range c.Events {
		switch t := r.traces[ev.Key]; {
		case t == nil:
		case ev.Kind == desired.Programmed && !r.core.Writing(ev.Key):
			// Its endpoint was already there (a restart): nothing more to follow.
			delete(r.traces, ev.Key)
		case ev.Kind == desired.Programmed:
			t.seen, t.kernel, t.write = r.now().Add(-ev.Latency), mapped, published
		case ev.Kind == desired.Removed:
			delete(r.traces, ev.Key)
		}
	}
}

// traceRoutable notes the routes a finished media batch made routable, once the core has
// started their endpoint writes.
func (r *Reconciler) traceRoutable(evs []desired.Event) {
	if r.traces == nil {
		return
	}
	at := r.now()
	for _, ev := range evs {
		switch t := r.traces[ev.Key]; {
		case t == nil:
		case !r.core.Writing(ev.Key):
			delete(r.traces, ev.Key)
		default:
			t.seen, t.kernel = at.Add(-ev.Latency), at
		}
	}
}

// traceWrites notes the start of the endpoint writes of traced routes.
func (r *Reconciler) traceWrites(ws []desired.Write) {
	if r.traces == nil {
		return
	}
	at := r.now()
	for _, w := range ws {
		if t := r.traces[w.Key]; t != nil && w.Op != desired.OpDelete && t.write.IsZero() {
			t.write = at
		}
	}
}

// traceWritten ends the traces of the routes whose endpoint write came back, with a "route
// timeline" line: each step's time since the route was seen.
func (r *Reconciler) traceWritten(outcomes []writeOutcome) {
	if r.traces == nil {
		return
	}
	for _, o := range outcomes {
		t := r.traces[o.Write.Key]
		if t == nil || t.write.IsZero() || t.seen.IsZero() {
			continue
		}
		delete(r.traces, o.Write.Key)
		if o.Result != desired.Applied {
			continue
		}
		r.log.Debug().Str("instance_id", o.Write.Key).Dur("pass_at", t.pass.Sub(t.seen)).Dur("mapped_at", t.mapped.Sub(t.seen)).
			Dur("kernel_at", t.kernel.Sub(t.seen)).Dur("write_at", t.write.Sub(t.seen)).Dur("acked_at", o.done.Sub(t.seen)).
			Msg("route timeline")
	}
}
