// Package kvstore holds livegate's JetStream KV buckets: desired routes, assigned endpoints and edge
// heartbeats. It adds what the stock client lacks: renewing a key together with its TTL (a lease),
// and a watch that hands consumers a whole snapshot before the updates, again after every re-watch,
// so they reconcile level-triggered.
package kvstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Bucket names (docs/architecture.md, "Contracts").
const (
	RoutesBucket    = "livegate_routes"
	EndpointsBucket = "livegate_endpoints"
	EdgesBucket     = "livegate_edges"
)

// markerTTL is how long an expiry marker stays in a bucket: long enough for any watcher that was
// briefly disconnected to see the deletion.
const markerTTL = 10 * time.Minute

// Buckets are the three livegate buckets.
type Buckets struct {
	Routes    jetstream.KeyValue
	Endpoints jetstream.KeyValue
	Edges     jetstream.KeyValue
}

// EnsureOption changes how Ensure (and events.EnsureStream) set up their streams.
type EnsureOption func(*ensureOptions)

type ensureOptions struct{ replicas int }

// WithReplicas asks for n copies of each stream (1 on a single server, 3 on a three-node cluster).
func WithReplicas(n int) EnsureOption { return func(o *ensureOptions) { o.replicas = n } }

// Replicas is the copy count a stream is set up with: the one asked for (at least 1), or more if
// the stream already has more. A client never lowers it: agents and edges started with different
// settings would otherwise scale the stream up and down against each other, and a stream that
// shrinks throws copies away. Lowering is an operator's `nats stream edit`.
func Replicas(ctx context.Context, js jetstream.JetStream, stream string, opts ...EnsureOption) (int, error) {
	o := ensureOptions{replicas: 1}
	for _, opt := range opts {
		opt(&o)
	}
	want := max(o.replicas, 1)
	st, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return want, nil
	}
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", stream, err)
	}
	return max(want, st.CachedInfo().Config.Replicas), nil
}

// Configs are the buckets' configurations, routes, endpoints and edges in that order, without
// their replica counts.
func Configs() []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{
		{Bucket: RoutesBucket, Description: "livegate desired routes, key = instance id", History: 1, Storage: jetstream.FileStorage, LimitMarkerTTL: markerTTL},
		{Bucket: EndpointsBucket, Description: "livegate assigned endpoints, key = instance id", History: 1, Storage: jetstream.FileStorage},
		{Bucket: EdgesBucket, Description: "livegate edge heartbeats, key = edge id", History: 1, Storage: jetstream.FileStorage, LimitMarkerTTL: markerTTL},
	}
}

// Ensure creates the buckets or updates them to the configuration livegate needs.
func Ensure(ctx context.Context, js jetstream.JetStream, opts ...EnsureOption) (*Buckets, error) {
	cfgs := Configs()
	kvs := make([]jetstream.KeyValue, len(cfgs))
	for i, cfg := range cfgs {
		n, err := Replicas(ctx, js, "KV_"+cfg.Bucket, opts...)
		if err != nil {
			return nil, fmt.Errorf("ensure bucket %s: %w", cfg.Bucket, err)
		}
		cfg.Replicas = n
		kv, err := js.CreateOrUpdateKeyValue(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("ensure bucket %s with %d replicas: %w", cfg.Bucket, n, err)
		}
		kvs[i] = kv
	}
	return &Buckets{Routes: kvs[0], Endpoints: kvs[1], Edges: kvs[2]}, nil
}

// PutTTL writes key with a TTL: unless written again within ttl (at least 1 s), the key is deleted
// and watchers see the deletion.
func PutTTL(ctx context.Context, js jetstream.JetStream, bucket, key string, value []byte, ttl time.Duration) (uint64, error) {
	ack, err := js.Publish(ctx, subject(bucket, key), value, jetstream.WithMsgTTL(ttl))
	if err != nil {
		return 0, fmt.Errorf("put %s/%s: %w", bucket, key, err)
	}
	return ack.Sequence, nil
}

// UpdateTTL is PutTTL only if the key's latest revision is lastRev (compare-and-set). A conflict
// wraps jetstream.ErrKeyRevisionMismatch.
func UpdateTTL(ctx context.Context, js jetstream.JetStream, bucket, key string, value []byte, lastRev uint64, ttl time.Duration) (uint64, error) {
	ack, err := js.Publish(ctx, subject(bucket, key), value, jetstream.WithMsgTTL(ttl), jetstream.WithExpectLastSequencePerSubject(lastRev))
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			err = fmt.Errorf("%w: %w", jetstream.ErrKeyRevisionMismatch, err)
		}
		return 0, fmt.Errorf("update %s/%s at revision %d: %w", bucket, key, lastRev, err)
	}
	return ack.Sequence, nil
}

func subject(bucket, key string) string { return "$KV." + bucket + "." + key }

// Entry is one key's state.
type Entry struct {
	Key      string
	Value    []byte
	Revision uint64
	// Deleted is true for a delete, a purge or a TTL expiry.
	Deleted bool
	// Purged tells a purge from a delete. The marker a lapsed per-key TTL leaves reads as a purge,
	// and livegate itself only ever deletes, so for livegate's keys it means "expired" unless an
	// operator purged the key by hand.
	Purged  bool
	Created time.Time
}

// Handler receives a watch. Snapshot and Update are called from one goroutine, never at once.
type Handler struct {
	// Snapshot gets every live key once the initial values are in, and again after a re-watch.
	Snapshot func(map[string]Entry)
	// Update gets each change after the snapshot.
	Update func(Entry)
	// Error, when set, hears why a watch broke before it is started again.
	Error func(error)
	// Restart, when set, starts the watch again with a fresh snapshot on every receive. Feed it
	// natsconn.Reconnects: after a reconnect the stock watcher only notices its consumer is gone
	// when heartbeats lapse, about 10 s later.
	Restart <-chan struct{}
}

var errRestart = errors.New("restart requested")

// rewatchDelay is the pause before a broken watch is started again.
const rewatchDelay = time.Second

// Watch watches keys matching pattern (">" for all) until ctx is done. When the watch breaks (the
// bucket is unreachable, the watcher stops) it starts again and delivers a fresh snapshot.
func Watch(ctx context.Context, kv jetstream.KeyValue, pattern string, h Handler) error {
	for {
		err := watchOnce(ctx, kv, pattern, h)
		if ctx.Err() != nil {
			return nil
		}
		if h.Error != nil {
			h.Error(fmt.Errorf("watch %s %s: %w", kv.Bucket(), pattern, err))
		}
		if errors.Is(err, errRestart) {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(rewatchDelay):
		}
	}
}

func watchOnce(ctx context.Context, kv jetstream.KeyValue, pattern string, h Handler) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := kv.Watch(wctx, pattern)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	snapshot := map[string]Entry{}
	synced := false
	for {
		var kve jetstream.KeyValueEntry
		var ok bool
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-h.Restart:
			return errRestart
		case kve, ok = <-w.Updates():
		}
		if !ok {
			return errors.New("watcher stopped")
		}
		if kve == nil {
			if !synced {
				synced = true
				if h.Snapshot != nil {
					h.Snapshot(snapshot)
				}
				snapshot = nil
			}
			continue
		}
		e := Entry{
			Key:      kve.Key(),
			Value:    kve.Value(),
			Revision: kve.Revision(),
			Deleted:  kve.Operation() != jetstream.KeyValuePut,
			Purged:   kve.Operation() == jetstream.KeyValuePurge,
			Created:  kve.Created(),
		}
		if !synced {
			if e.Deleted {
				delete(snapshot, e.Key)
			} else {
				snapshot[e.Key] = e
			}
			continue
		}
		if h.Update != nil {
			h.Update(e)
		}
	}
}
