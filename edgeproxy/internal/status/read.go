package status

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Read takes a snapshot of the three buckets and, for each route, the latest route_refused event
// about it. A bucket or stream that does not exist yet reads as empty: no edge or agent has
// started against this NATS.
func Read(ctx context.Context, js jetstream.JetStream, now time.Time) (Snapshot, error) {
	s := Snapshot{At: now, Edges: map[string]*livegatev1.EdgeStatus{}, Routes: map[string]*livegatev1.Route{},
		Endpoints: map[string]*livegatev1.Endpoint{}, Refusals: map[string]*livegatev1.Event{}, Invalid: map[string]string{}}
	// An edge's status that does not decode fails the read; a route that does not is reported as
	// invalid; an endpoint that does not is left out.
	if err := readBucket(ctx, js, kvstore.EdgesBucket, s.Edges, func(_ string, err error) error { return err }); err != nil {
		return s, err
	}
	if err := readBucket(ctx, js, kvstore.RoutesBucket, s.Routes, func(key string, err error) error {
		s.Invalid[key] = err.Error()
		return nil
	}); err != nil {
		return s, err
	}
	if err := readBucket(ctx, js, kvstore.EndpointsBucket, s.Endpoints, func(string, error) error { return nil }); err != nil {
		return s, err
	}
	stream, err := js.Stream(ctx, events.StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("stream %s: %w", events.StreamName, err)
	}
	for key, r := range s.Routes {
		if ep, ok := s.Endpoints[key]; ok && ep.GetSessionId() == r.GetSessionId() {
			continue
		}
		pool := r.GetPool()
		if events.ValidateToken("pool", pool) != nil || events.ValidateToken("instance id", key) != nil {
			continue
		}
		msg, err := stream.GetLastMsgForSubject(ctx, events.Subject(pool, key, livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return s, fmt.Errorf("last refusal of %s: %w", key, err)
		}
		if ev, err := events.Decode(msg.Data); err == nil {
			s.Refusals[key] = ev
		}
	}
	return s, nil
}

// readBucket decodes every live key of bucket into m. A value that does not decode is handed to
// bad: the error it returns fails the read, nil leaves the key out.
func readBucket[T any, P interface {
	*T
	proto.Message
}](ctx context.Context, js jetstream.JetStream, bucket string, m map[string]P, bad func(key string, err error) error) error {
	kv, err := js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bucket %s: %w", bucket, err)
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("bucket %s: list keys: %w", bucket, err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue
		}
		if err != nil {
			return fmt.Errorf("bucket %s: get %s: %w", bucket, k, err)
		}
		v := P(new(T))
		if err := wire.Unmarshal(e.Value(), v); err != nil {
			if err := bad(k, err); err != nil {
				return fmt.Errorf("bucket %s: key %s: %w", bucket, k, err)
			}
			continue
		}
		m[k] = v
	}
	return nil
}
