package kvstore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/natstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func connect(t *testing.T, url string) (jetstream.JetStream, *kvstore.Buckets) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := kvstore.Ensure(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
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

// A watch that breaks because the server went away comes back with a fresh snapshot that
// includes what changed meanwhile.
func TestWatchResnapshotsAfterServerRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := natstest.External(t)
	js, b := connect(t, srv.URL())
	if _, err := b.Routes.Put(ctx, "a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var snaps []string
	got := make(chan struct{}, 10)
	go func() {
		_ = kvstore.Watch(ctx, b.Routes, ">", kvstore.Handler{
			Snapshot: func(m map[string]kvstore.Entry) {
				mu.Lock()
				snaps = append(snaps, keys(m))
				mu.Unlock()
				got <- struct{}{}
			},
			Update: func(kvstore.Entry) { got <- struct{}{} },
		})
	}()
	<-got
	srv.Stop()
	srv.Start()
	// Writes after the restart reach the watcher, through updates or a new snapshot.
	deadline := time.Now().Add(30 * time.Second)
	for {
		wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := kvstore.PutTTL(wctx, js, kvstore.RoutesBucket, "b", []byte("1"), time.Minute)
		wcancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("put after restart: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for {
		select {
		case <-got:
		case <-time.After(20 * time.Second):
			t.Fatalf("watch did not recover; snapshots %v", snaps)
		}
		e, err := b.Routes.Get(ctx, "b")
		if err == nil && e != nil {
			return
		}
	}
}
