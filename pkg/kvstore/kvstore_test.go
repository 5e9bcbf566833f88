package kvstore_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/natsconn"
	"github.com/livegate/livegate/pkg/natstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

func connect(t *testing.T, url string) (jetstream.JetStream, *kvstore.Buckets) {
	t.Helper()
	_, js := natstest.Connect(t, url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	b := natstest.Buckets(t, js)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := kvstore.Ensure(ctx, js); err != nil {
		t.Fatalf("second Ensure: %v", err)
	}
	return js, b
}

// recorder keeps what a watch delivered, in order.
type recorder struct {
	mu    sync.Mutex
	calls []string
	ch    chan struct{}
}

func newRecorder() *recorder { return &recorder{ch: make(chan struct{}, 100)} }

func (r *recorder) handler() kvstore.Handler {
	return kvstore.Handler{
		Snapshot: func(m map[string]kvstore.Entry) {
			r.add("snapshot:" + keys(m))
		},
		Update: func(e kvstore.Entry) {
			op := "put:"
			if e.Deleted {
				op = "del:"
			}
			r.add(op + e.Key)
		},
	}
}

func keys(m map[string]kvstore.Entry) string {
	s := ""
	for _, k := range []string{"a", "b", "c"} {
		if _, ok := m[k]; ok {
			s += k
		}
	}
	return s
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	r.calls = append(r.calls, s)
	r.mu.Unlock()
	r.ch <- struct{}{}
}

func (r *recorder) waitFor(t *testing.T, want []string, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		r.mu.Lock()
		got := append([]string(nil), r.calls...)
		r.mu.Unlock()
		if len(got) >= len(want) {
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("watch delivered %v, want %v", got, want)
				}
			}
			return
		}
		select {
		case <-r.ch:
		case <-deadline:
			t.Fatalf("watch delivered %v, want %v", got, want)
		}
	}
}

func servers() map[string]func(*testing.T) string {
	return map[string]func(*testing.T) string{
		"embedded": func(t *testing.T) string { return natstest.Embedded(t) },
		"binary":   func(t *testing.T) string { return natstest.External(t).URL() },
	}
}

func TestWatchSnapshotMarkerUpdatesAndTTL(t *testing.T) {
	for name, start := range servers() {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			js, b := connect(t, start(t))
			if _, err := b.Routes.Put(ctx, "a", []byte("1")); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Routes.Put(ctx, "c", []byte("1")); err != nil {
				t.Fatal(err)
			}
			if err := b.Routes.Delete(ctx, "c"); err != nil {
				t.Fatal(err)
			}
			rec := newRecorder()
			go func() { _ = kvstore.Watch(ctx, b.Routes, ">", rec.handler()) }()
			rec.waitFor(t, []string{"snapshot:a"}, 5*time.Second)

			if _, err := kvstore.PutTTL(ctx, js, kvstore.RoutesBucket, "b", []byte("lease"), time.Second); err != nil {
				t.Fatal(err)
			}
			// The key lives for its TTL, then disappears and the watcher sees it go.
			rec.waitFor(t, []string{"snapshot:a", "put:b", "del:b"}, 10*time.Second)
			if _, err := b.Routes.Get(ctx, "b"); !errors.Is(err, jetstream.ErrKeyNotFound) {
				t.Fatalf("expired key: Get = %v, want ErrKeyNotFound", err)
			}
			if err := b.Routes.Delete(ctx, "a"); err != nil {
				t.Fatal(err)
			}
			rec.waitFor(t, []string{"snapshot:a", "put:b", "del:b", "del:a"}, 5*time.Second)
		})
	}
}

func TestLeaseRenewalKeepsKey(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	js, b := connect(t, natstest.Embedded(t))
	for i := 0; i < 4; i++ {
		if _, err := kvstore.PutTTL(ctx, js, kvstore.RoutesBucket, "k", []byte("v"), time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if _, err := b.Routes.Get(ctx, "k"); err != nil {
		t.Fatalf("renewed key gone: %v", err)
	}
}

func TestUpdateTTLCompareAndSet(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	js, b := connect(t, natstest.Embedded(t))
	rev, err := b.Edges.Create(ctx, "edge-1", []byte("v1"), jetstream.KeyTTL(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Edges.Create(ctx, "edge-1", []byte("v1"), jetstream.KeyTTL(time.Minute)); !errors.Is(err, jetstream.ErrKeyExists) {
		t.Fatalf("second Create = %v, want ErrKeyExists", err)
	}
	rev2, err := kvstore.UpdateTTL(ctx, js, kvstore.EdgesBucket, "edge-1", []byte("v2"), rev, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kvstore.UpdateTTL(ctx, js, kvstore.EdgesBucket, "edge-1", []byte("v3"), rev, time.Minute); !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		t.Fatalf("stale UpdateTTL = %v, want ErrKeyRevisionMismatch", err)
	}
	e, err := b.Edges.Get(ctx, "edge-1")
	if err != nil || string(e.Value()) != "v2" || e.Revision() != rev2 {
		t.Fatalf("Get = %v %v, want v2 at %d", e, err, rev2)
	}
}

// After a server restart the watch starts again (on the reconnect signal) and delivers a fresh
// snapshot holding what changed while it was away.
func TestWatchResnapshotsAfterServerRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := natstest.External(t)
	nc, err := natsconn.Connect(ctx, natsconn.Config{URLs: []string{srv.URL()}}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	b, err := kvstore.Ensure(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Routes.Put(ctx, "a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	h := rec.handler()
	h.Restart = natsconn.Reconnects(nc)
	go func() { _ = kvstore.Watch(ctx, b.Routes, ">", h) }()
	rec.waitFor(t, []string{"snapshot:a"}, 5*time.Second)
	srv.Stop()
	// Changed while the watcher is away: written by another client once the server is back.
	srv.Start()
	_, b2 := connect(t, srv.URL())
	if _, err := b2.Routes.Put(ctx, "c", []byte("1")); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(20 * time.Second)
	for {
		rec.mu.Lock()
		calls := append([]string(nil), rec.calls...)
		rec.mu.Unlock()
		for _, c := range calls[1:] {
			if c == "snapshot:ac" || c == "put:c" {
				return
			}
		}
		select {
		case <-rec.ch:
		case <-deadline:
			t.Fatalf("watch did not recover after restart: %v", calls)
		}
	}
}

// TestReplicas: a single server holds one copy; asking it for three is a clear error, not a
// bucket quietly made with one.
func TestReplicas(t *testing.T) {
	js, _ := connect(t, natstest.Embedded(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, b := range []string{kvstore.RoutesBucket, kvstore.EndpointsBucket, kvstore.EdgesBucket} {
		n, err := kvstore.Replicas(ctx, js, "KV_"+b, kvstore.WithReplicas(0))
		if err != nil || n != 1 {
			t.Errorf("Replicas of %s = %d, %v; want 1", b, n, err)
		}
	}
	if n, err := kvstore.Replicas(ctx, js, "KV_none", kvstore.WithReplicas(3)); err != nil || n != 3 {
		t.Errorf("Replicas of a new stream = %d, %v; want 3", n, err)
	}
	_, err := kvstore.Ensure(ctx, js, kvstore.WithReplicas(3))
	if err == nil || !strings.Contains(err.Error(), "with 3 replicas") {
		t.Fatalf("Ensure with 3 replicas on one server = %v, want an error naming the count", err)
	}
}
