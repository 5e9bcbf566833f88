package events_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/natstest"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

const (
	followName   = "route-refusals-i1"
	followFilter = "livegate.v1.events.*.i1.route_refused"
)

// follower is a Follower of the test's consumer and the reasons it has read.
type follower struct {
	fl      *events.Follower
	reasons chan string
}

func newFollower(js jetstream.JetStream) *follower {
	f := &follower{reasons: make(chan string, 16)}
	f.fl = events.NewFollower(js, followName, followFilter, events.FollowHandler{
		Event: func(_ string, ev *livegatev1.Event) { f.reasons <- ev.GetRouteRefused().GetReason() },
	})
	return f
}

// run is one call of Follow, going on until the test ends or stop.
type run struct {
	*follower
	ended chan struct{} // closed when Follow has returned err
	err   error
	stop  context.CancelFunc
}

func (f *follower) follow(t *testing.T) *run {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{follower: f, ended: make(chan struct{}), stop: cancel}
	go func() {
		defer close(r.ended)
		r.err = f.fl.Follow(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.ended
	})
	return r
}

func (r *run) next(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-r.reasons:
		if got != want {
			t.Fatalf("read %q, want %q", got, want)
		}
	case <-r.ended:
		t.Fatalf("follow ended before %q: %v", want, r.err)
	case <-time.After(20 * time.Second):
		t.Fatalf("%q never read", want)
	}
}

func (r *run) endsWith(t *testing.T, want string) {
	t.Helper()
	select {
	case <-r.ended:
		if r.err == nil || !strings.Contains(r.err.Error(), want) {
			t.Fatalf("follow ended with %v, want an error saying %q", r.err, want)
		}
	case got := <-r.reasons:
		t.Fatalf("read %q, want the follow to end", got)
	case <-time.After(40 * time.Second):
		t.Fatalf("follow did not end (want %q)", want)
	}
}

func refuse(t *testing.T, js jetstream.JetStream, edge, reason string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := events.NewPublisher(js, "livegate-edgeproxy/"+edge).Publish(ctx, &livegatev1.Event{
		Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED, InstanceId: "i1", Pool: "pool-" + edge, SessionId: "s1",
		Details: &livegatev1.Event_RouteRefused{RouteRefused: &livegatev1.RouteRefused{EdgeId: edge, Reason: reason}},
	}); err != nil {
		t.Fatal(err)
	}
}

func streamOn(t *testing.T, url string, opts ...nats.Option) jetstream.JetStream {
	t.Helper()
	_, js := natstest.Connect(t, url, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := events.EnsureStream(ctx, js); err != nil {
		t.Fatal(err)
	}
	return js
}

// TestFollowStartsAtTheLastEventAgain: a follower started anew (a restarted agent, with nothing
// of what it read before) reads the last event of each subject again, not only what comes next.
func TestFollowStartsAtTheLastEventAgain(t *testing.T) {
	js := streamOn(t, natstest.Embedded(t))
	refuse(t, js, "e1", "old")
	refuse(t, js, "e1", "e1 before")
	refuse(t, js, "e2", "e2 before")

	first := newFollower(js).follow(t)
	first.next(t, "e1 before")
	first.next(t, "e2 before")
	refuse(t, js, "e1", "e1 after")
	first.next(t, "e1 after")
	first.stop()
	if <-first.ended; first.err != nil {
		t.Fatalf("stopped follow: %v", first.err)
	}

	again := newFollower(js).follow(t)
	again.next(t, "e2 before")
	again.next(t, "e1 after")
}

// TestFollowEndsWhenItsConsumerIsDeleted: the caller hears it, follows again, and reads what
// came meanwhile, not again what it had read.
func TestFollowEndsWhenItsConsumerIsDeleted(t *testing.T) {
	js := streamOn(t, natstest.Embedded(t))
	refuse(t, js, "e1", "before")
	f := newFollower(js)
	r := f.follow(t)
	r.next(t, "before")
	if err := js.DeleteConsumer(context.Background(), events.StreamName, followName); err != nil {
		t.Fatal(err)
	}
	r.endsWith(t, "stopped")
	refuse(t, js, "e2", "meanwhile")
	f.follow(t).next(t, "meanwhile")
}

// linked starts a follower whose connection goes through a link the test controls, and reads
// a first event through it; admin reaches the server directly.
func linked(t *testing.T) (admin jetstream.JetStream, l *link, r *run) {
	t.Helper()
	url := natstest.Embedded(t)
	admin = streamOn(t, url)
	l = newLink(t, strings.TrimPrefix(url, "nats://"))
	js := streamOn(t, "nats://"+l.addr(), nats.ReconnectWait(50*time.Millisecond), nats.MaxReconnects(-1))
	refuse(t, admin, "e1", "before")
	r = newFollower(js).follow(t)
	r.next(t, "before")
	return admin, l, r
}

// TestFollowCarriesOnAfterItsConsumerWasDroppedWhileAway: a consumer the server dropped while the
// follower's connection was down answers nothing once it is back; the follower makes it again at
// the reconnect and reads what came meanwhile.
func TestFollowCarriesOnAfterItsConsumerWasDroppedWhileAway(t *testing.T) {
	admin, link, r := linked(t)
	link.cut()
	if err := admin.DeleteConsumer(context.Background(), events.StreamName, followName); err != nil {
		t.Fatal(err)
	}
	refuse(t, admin, "e1", "meanwhile")
	link.mend()
	r.next(t, "meanwhile")
}

// TestFollowReadsWhatADeadConnectionSwallowed: what the server sent into a connection that died
// without a word (a partition) it counts as delivered; the follower reads it again after the
// reconnect.
func TestFollowReadsWhatADeadConnectionSwallowed(t *testing.T) {
	admin, link, r := linked(t)
	link.swallow()
	refuse(t, admin, "e1", "during the partition")
	// Long enough for the server to send it into the dead link; were it sent after the cut, the
	// test would pass on any code, never fail on a good one.
	time.Sleep(200 * time.Millisecond)
	link.cut()
	link.mend()
	r.next(t, "during the partition")
	refuse(t, admin, "e1", "after")
	r.next(t, "after")
}

// link is a TCP relay to the server that the test can cut (every connection closed, new ones
// refused) and mend.
type link struct {
	ln       net.Listener
	upstream string
	mu       sync.Mutex
	down     bool
	swallows bool // what the server sends is dropped
	conns    []net.Conn
}

func newLink(t *testing.T, upstream string) *link {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &link{ln: ln, upstream: upstream}
	t.Cleanup(func() {
		_ = ln.Close()
		l.cut()
	})
	go l.serve()
	return l
}

func (l *link) addr() string { return l.ln.Addr().String() }

func (l *link) serve() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		if l.down {
			l.mu.Unlock()
			_ = c.Close()
			continue
		}
		u, err := net.Dial("tcp", l.upstream)
		if err != nil {
			l.mu.Unlock()
			_ = c.Close()
			continue
		}
		l.conns = append(l.conns, c, u)
		l.mu.Unlock()
		go pipe(u, c, func() bool { return false })
		go pipe(c, u, l.swallowing)
	}
}

// pipe copies src to dst, dropping what comes while drop says so, until either closes.
func pipe(dst, src net.Conn, drop func() bool) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !drop() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (l *link) swallowing() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.swallows
}

// swallow drops what the server sends from now on, until the next cut.
func (l *link) swallow() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.swallows = true
}

func (l *link) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down, l.swallows = true, false
	for _, c := range l.conns {
		_ = c.Close()
	}
	l.conns = nil
}

func (l *link) mend() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down = false
}
