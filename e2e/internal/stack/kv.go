package stack

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// KV is a run's own client of the buckets: it reads what the edges and agents wrote and writes
// routes as an agent would.
type KV struct {
	NC *nats.Conn
	JS jetstream.JetStream
	*kvstore.Buckets
}

// DialKV connects to url and sets the buckets up, retrying both for up to timeout: a server just
// started may not listen yet, and a cluster's JetStream takes buckets only once its meta leader
// is elected.
func DialKV(ctx context.Context, url string, timeout time.Duration, ensure []kvstore.EnsureOption, opts ...nats.Option) (*KV, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var kv KV
	var err error
	for {
		if kv.NC == nil {
			kv.NC, err = nats.Connect(url, opts...)
		}
		if kv.NC != nil && kv.JS == nil {
			kv.JS, err = jetstream.New(kv.NC)
		}
		if kv.JS != nil {
			cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
			kv.Buckets, err = kvstore.Ensure(cctx, kv.JS, ensure...)
			ccancel()
			if err == nil {
				return &kv, nil
			}
		}
		select {
		case <-ctx.Done():
			if kv.NC != nil {
				kv.NC.Close()
			}
			return nil, fmt.Errorf("kv client of %s: %w", url, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close closes the connection.
func (kv *KV) Close() { kv.NC.Close() }

// Keys lists kv's keys; none is no error.
func Keys(ctx context.Context, kv jetstream.KeyValue, timeout time.Duration) ([]string, error) {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ks, err := kv.Keys(cctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	return ks, err
}
