package reconcile

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/livegate/livegate/edgeproxy/internal/desired"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/media"
	"github.com/livegate/livegate/edgeproxy/internal/routes"
)

// program makes HAProxy's map hold p at once, hands p's media mappings to the media plane (see
// syncMedia), and hands the map to the map file writer. With full, it reads HAProxy's live map
// back first and syncs the media plane even when its mappings did not change (the plane decides
// itself when to read the kernel back).
func (r *Reconciler) program(ctx context.Context, p *desired.Plan, full bool) error {
	if full || p.MediaChanged || r.mediaErr != nil || r.mediaHeld == nil {
		r.syncMedia(ctx, p.Media)
	}
	if err := r.programHAProxy(ctx, p.Map, full); err != nil {
		return err
	}
	if r.files != nil && (full || !maps.Equal(p.Map, r.mapWritten)) {
		r.files.Offer(p.Map)
		r.mapWritten = p.Map
	}
	return nil
}

// mediaBatch is the outcome of one media plane sync.
type mediaBatch struct {
	want map[string][]media.Mapping
	err  error
}

// syncMedia has the media plane hold want. Its batches (kernel rules, conntrack) take far longer
// than a map change, so they run off the loop, one at a time: the loop goes on programming
// HAProxy for the routes that arrive meanwhile, and the mappings wanted while a batch runs wait
// for it and go as one, the latest replacing the others. A route is published (and reported)
// once a batch holding its mappings is done: see routable.
func (r *Reconciler) syncMedia(ctx context.Context, want map[string][]media.Mapping) {
	if r.mediaBusy {
		r.mediaQueued = want
		return
	}
	r.mediaBusy = true
	r.mediaSyncs.Go(func() { r.mediaDone <- mediaBatch{want: want, err: r.d.Media.Sync(ctx, want)} })
}

// mediaSynced takes in a finished media batch, starts the one queued, and reports whether a pass
// should follow (routes may have become routable).
func (r *Reconciler) mediaSynced(ctx context.Context, b mediaBatch) bool {
	r.mediaBusy = false
	if b.err != nil {
		r.mediaErr = fmt.Errorf("program media plane: %w", b.err)
		if ctx.Err() == nil {
			r.d.Metrics.errors.WithLabelValues(ErrKindMedia).Inc()
			r.log.Error().Err(r.mediaErr).Msg("media plane sync failed; retrying")
			r.mediaRetry = true
		}
	} else {
		r.mediaErr, r.mediaHeld = nil, b.want
	}
	if q := r.mediaQueued; q != nil {
		r.mediaQueued = nil
		r.syncMedia(ctx, q)
	}
	r.health()
	return b.err == nil
}

// awaitMedia waits until no media batch runs or is queued.
func (r *Reconciler) awaitMedia(ctx context.Context) {
	for r.mediaBusy {
		r.mediaSynced(ctx, <-r.mediaDone)
	}
}

// publishRoutable writes the endpoints, and reports the events, of the routes the last media
// batch made routable.
func (r *Reconciler) publishRoutable(ctx context.Context) {
	if r.planMedia == nil {
		return
	}
	ws, evs := r.core.Routable(r.now(), r.holds(r.planMedia))
	r.traceRoutable(evs)
	// The endpoints first: a session manager waits for them, and the events' publishes would
	// otherwise usually go ahead of them on the connection.
	r.startWrites(ctx, ws)
	r.report(evs)
}

// routable says which routes of p the media plane holds: those without media mappings, and those
// whose mappings the last successful batch held.
func (r *Reconciler) routable(p *desired.Plan) desired.Ready { return r.holds(p.Media) }

// holds says which routes the media plane holds of those wanting the mappings want.
func (r *Reconciler) holds(want map[string][]media.Mapping) desired.Ready {
	return func(key string) bool {
		want, ok := want[key]
		if !ok {
			return true
		}
		held, ok := r.mediaHeld[key]
		return ok && slices.Equal(held, want)
	}
}

// claimsRoutable reports whether the media plane already holds every route p claims.
func (r *Reconciler) claimsRoutable(p *desired.Plan) bool {
	ready := r.routable(p)
	for _, c := range p.Claims {
		if !ready(c.Key) {
			return false
		}
	}
	return true
}

// programHAProxy makes HAProxy's map hold entries. With full, or after a failure, it first reads
// the live map back instead of trusting what it last wrote.
func (r *Reconciler) programHAProxy(ctx context.Context, entries map[string]string, full bool) error {
	if full || r.programmed == nil {
		live, err := r.d.Driver.List(ctx)
		if err != nil {
			r.programmed = nil
			r.d.Metrics.errors.WithLabelValues(ErrKindHAProxy).Inc()
			return fmt.Errorf("read haproxy map: %w", err)
		}
		if r.programmed != nil {
			set, del := routes.Diff(r.programmed, live)
			if drift := len(set) + len(del); drift > 0 {
				r.d.Metrics.drift.Add(float64(drift))
				r.log.Warn().Int("entries", drift).Msg("haproxy map drifted; repairing")
			}
		}
		r.programmed = live
	}
	set, del := routes.Diff(entries, r.programmed)
	if len(set)+len(del) > 0 {
		began := r.now()
		apply := r.d.Driver.Apply
		if d, ok := r.d.Driver.(haproxy.KnownApplier); ok {
			known := r.programmed
			apply = func(ctx context.Context, set map[string]string, del []string) error {
				return d.ApplyKnown(ctx, set, del, known)
			}
		}
		if err := apply(ctx, set, del); err != nil {
			r.programmed = nil
			r.d.Metrics.errors.WithLabelValues(ErrKindHAProxy).Inc()
			return fmt.Errorf("program haproxy map (%d set, %d deleted): %w", len(set), len(del), err)
		}
		r.programmed = entries
		r.log.Debug().Int("set", len(set)).Int("deleted", len(del)).Dur("took", r.now().Sub(began)).Msg("haproxy map programmed")
	}
	return nil
}
