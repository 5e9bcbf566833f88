package reconcile

import (
	"context"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/placement"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// beatStatus is what the heartbeat says of the loop, as of the loop's last update.
type beatStatus struct {
	total, free, routes int
	drain               placement.Drain
	claiming            bool
}

// updateBeat records what the next heartbeat publishes. It runs on the loop's goroutine, which
// owns the core and may call the media plane; the heartbeat itself runs on its own (see beats),
// so a long pass, a media batch holding the plane or a slow KV write never makes the key lapse.
// The plane's free ports are read only when capacity is set (once per heartbeat period): the
// plane answers after its batch under way, and a pass must not wait for that. A change of the
// drain state asks for a heartbeat at once: the pool learns of a drain (or its end) without
// waiting for the next period.
func (r *Reconciler) updateBeat(drain placement.Drain, capacity bool) {
	r.beatMu.Lock()
	total, free := r.beat.total, r.beat.free
	r.beatMu.Unlock()
	if capacity {
		total, free = r.d.Media.Capacity()
		total, free = max(total, 0), max(free, 0)
	}
	st := beatStatus{
		total: total, free: free, routes: len(r.core.Served()),
		drain: drain, claiming: r.core.Claiming(drain, total, free),
	}
	r.d.Metrics.observeDrain(drain, st.claiming)
	r.beatMu.Lock()
	r.beat = st
	r.beatMu.Unlock()
	if drain != r.beatDrain {
		r.beatDrain = drain
		select {
		case r.beatNow <- struct{}{}:
		default:
		}
	}
}

// beats writes the heartbeat at once, then every Config.Heartbeat and whenever updateBeat asks,
// until ctx ends. A write gets one heartbeat period (less when the TTL leaves less): a request
// sent just before the connection went stale never gets its reply, and waiting longer for it
// would let the key lapse although the reconnected client could write it. The next write, which
// the ticker (holding one tick while a write runs) starts right away, supersedes it.
func (r *Reconciler) beats(ctx context.Context) {
	tick := time.NewTicker(r.cfg.Heartbeat)
	defer tick.Stop()
	for {
		r.heartbeat(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-r.beatNow:
		}
	}
}

// heartbeat writes this edge's status with a TTL: when the edge stops, the key expires and the
// pool takes its routes over.
func (r *Reconciler) heartbeat(ctx context.Context) {
	r.beatMu.Lock()
	b := r.beat
	r.beatMu.Unlock()
	st := &livegatev1.EdgeStatus{
		EdgeId: r.cfg.EdgeID, Pool: r.cfg.Pool, PublicHost: r.cfg.PublicHost,
		Capacity: uint32(b.total), FreePorts: uint32(b.free), Routes: uint32(b.routes),
		Heartbeat: timestamppb.New(r.now()), Version: r.cfg.Version,
		MaxRoutes: uint32(r.cfg.MaxRoutes), Draining: b.drain.Draining, Claiming: b.claiming,
	}
	if !b.drain.Deadline.IsZero() {
		st.DrainDeadline = timestamppb.New(b.drain.Deadline)
	}
	data, err := wire.Marshal(st)
	if err == nil {
		wctx, cancel := context.WithTimeout(ctx, min(r.cfg.Heartbeat, r.cfg.EdgeTTL-r.cfg.Heartbeat))
		_, err = kvstore.PutTTL(wctx, r.d.JS, kvstore.EdgesBucket, r.cfg.EdgeID, data, r.cfg.EdgeTTL)
		cancel()
	}
	if err != nil && ctx.Err() == nil {
		r.d.Metrics.errors.WithLabelValues(ErrKindHeartbeat).Inc()
		r.log.Warn().Err(err).Msg("heartbeat write failed")
	}
}
