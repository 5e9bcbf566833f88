package reconcile

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/desired"
	"github.com/livegate/livegate/pkg/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// parallelism bounds concurrent KV writes.
const parallelism = 32

// writeOutcome is a write's result for the core, with the error for the log and when it came.
type writeOutcome struct {
	desired.WriteResult
	err  error
	done time.Time
}

// maxWriteBatches bounds the endpoint write batches under way at once.
const maxWriteBatches = 8

// writeBatch is the outcome of the endpoint writes of one pass; stopping says the loop was
// stopping, so that failures are not reported.
type writeBatch struct {
	outcomes []writeOutcome
	stopping bool
}

// runWrites applies ws to livegate_endpoints with bounded concurrency.
func (r *Reconciler) runWrites(ctx context.Context, ws []desired.Write) []writeOutcome {
	at := r.now()
	if len(ws) == 1 {
		// Most batches under churn: a goroutine more would be one more wait for a core.
		return []writeOutcome{r.write(ctx, ws[0], at)}
	}
	out := make([]writeOutcome, len(ws))
	sem := make(chan struct{}, parallelism)
	var wg sync.WaitGroup
	for i, w := range ws {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			out[i] = r.write(ctx, w, at)
		})
	}
	wg.Wait()
	return out
}

// write applies one write; the endpoint says it was assigned at.
func (r *Reconciler) write(ctx context.Context, w desired.Write, at time.Time) writeOutcome {
	kv := r.d.Buckets.Endpoints
	var rev uint64
	var err error
	if w.Op == desired.OpDelete {
		err = kv.Delete(ctx, w.Key, jetstream.LastRevision(w.Revision))
	} else {
		var data []byte
		if data, err = wire.Marshal(w.Endpoint.Proto(at)); err == nil {
			switch w.Op {
			case desired.OpCreate:
				rev, err = kv.Create(ctx, w.Key, data)
			case desired.OpUpdate:
				rev, err = kv.Update(ctx, w.Key, data, w.Revision)
			default:
				rev, err = kv.Put(ctx, w.Key, data)
			}
		}
	}
	res := desired.WriteResult{Write: w, Result: desired.Applied, Revision: rev}
	switch {
	case err == nil:
	case errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || isWrongSequence(err):
		res.Result = desired.Conflict
	default:
		res.Result = desired.Failed
	}
	return writeOutcome{WriteResult: res, err: err, done: r.now()}
}

func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// claim takes p's pool routes with their compare-and-set writes: exactly one edge wins each. It
// returns the keys this edge lost, which the core has taken out of p.
func (r *Reconciler) claim(ctx context.Context, p *desired.Plan) []string {
	if len(p.Claims) == 0 {
		return nil
	}
	outcomes := r.runWrites(ctx, p.Claims)
	results := make([]desired.WriteResult, len(outcomes))
	for i, o := range outcomes {
		results[i] = o.WriteResult
		if o.Result != desired.Applied {
			r.d.Metrics.claims.WithLabelValues("lost").Inc()
			if ctx.Err() == nil && o.Result == desired.Failed {
				r.d.Metrics.errors.WithLabelValues(ErrKindKV).Inc()
				r.log.Warn().Err(o.err).Str("instance_id", o.Write.Key).Msg("claim write failed")
			}
			continue
		}
		r.d.Metrics.claims.WithLabelValues("won").Inc()
		r.log.Info().Str("instance_id", o.Write.Key).Msg("pool route claimed")
	}
	return r.core.Claimed(p, results)
}

// publish starts the endpoint writes of p. They run while the loop goes on, whose programming
// does not depend on them: the writes of later passes start beside them (the core leaves out a
// key whose write is under way), and a pass that must know whether an endpoint is gone (see
// desired.State.AwaitRemovals) first takes their results in.
func (r *Reconciler) publish(ctx context.Context, p *desired.Plan, ready desired.Ready) {
	r.startWrites(ctx, r.core.Publish(p, ready))
}

// startWrites runs ws as one batch beside those under way, at most maxWriteBatches of them.
func (r *Reconciler) startWrites(ctx context.Context, ws []desired.Write) {
	if len(ws) == 0 {
		return
	}
	if r.writesUnderWay == maxWriteBatches {
		r.takeWritten(<-r.written)
	}
	r.traceWrites(ws)
	r.writesUnderWay++
	r.writes.Go(func() {
		outcomes := r.runWrites(ctx, ws)
		r.written <- writeBatch{outcomes: outcomes, stopping: ctx.Err() != nil}
	})
}

// awaitWritten takes in the results of the endpoint writes under way, if any.
func (r *Reconciler) awaitWritten() {
	for r.writesUnderWay > 0 {
		r.takeWritten(<-r.written)
	}
}

// awaitWrite takes in results of the endpoint writes under way until none is key's.
func (r *Reconciler) awaitWrite(key string) {
	for r.writesUnderWay > 0 && r.core.Writing(key) {
		r.takeWritten(<-r.written)
	}
}

// takeWritten hands the results of one batch of endpoint writes to the core, and reports the
// failures other than a removal losing to another edge's write: the core writes those again after
// retryDelay. It asks for a pass when the core wants one (see desired.State.Written).
func (r *Reconciler) takeWritten(b writeBatch) {
	r.writesUnderWay--
	r.traceWritten(b.outcomes)
	results := make([]desired.WriteResult, len(b.outcomes))
	for i, o := range b.outcomes {
		results[i] = o.WriteResult
		deleted := o.Write.Op == desired.OpDelete
		if o.err != nil && !(deleted && isWrongSequence(o.err)) && !b.stopping {
			r.d.Metrics.errors.WithLabelValues(ErrKindKV).Inc()
			r.log.Warn().Err(o.err).Str("instance_id", o.Write.Key).Bool("delete", deleted).Msg("endpoint write failed")
		}
		if deleted && o.Result == desired.Conflict && !isWrongSequence(o.err) {
			results[i].Result = desired.Failed
		}
	}
	if r.core.Written(results) {
		r.replan = true
	}
}
