// Package natsauth proves deploy/nats/accounts.conf against the real nats-server, over TLS with
// nkey identities: agents and edges can do their jobs through the real pkg code paths, and an
// agent cannot speak for another instance nor write what only edges write.
package natsauth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/freeport"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/natsconn"
	"github.com/livegate/livegate/pkg/natstest"
	"github.com/livegate/livegate/pkg/selfsigned"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"
)

// The example identities in deploy/nats/accounts.conf, replaced by keys made for the test.
var exampleKeys = map[string]string{
	"app-1":  "UDIWPV76LHLG32L56DBWQFWZSNPUZNFI4ZWFBTSWJQV5PM6BJE6IMJW5",
	"app-2":  "UAXSXZ4DEOA5SGHOS5QIY4DNLTLQLHCVOP4L7TKGZDRGOH4FW4OJ5O3I",
	"edge-1": "UBEKH3IIFMASZUUKJCNV3BEMJ4OP66PPFPFVUM5DSVTIUYZTUIQ4DBLG",
}

type rig struct {
	dir   string
	url   string
	ca    string
	seeds map[string]string
}

func startServer(t *testing.T) *rig {
	t.Helper()
	bin, err := natstest.Binary()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	dir := t.TempDir()
	conf, err := os.ReadFile("../../deploy/nats/accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	text := string(conf)
	r := &rig{dir: dir, seeds: map[string]string{}}
	for id, pub := range exampleKeys {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		newPub, _ := kp.PublicKey()
		seed, _ := kp.Seed()
		r.seeds[id] = filepath.Join(dir, id+".nk")
		if err := os.WriteFile(r.seeds[id], seed, 0o600); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(text, pub) {
			t.Fatalf("accounts.conf no longer holds the example key of %s", id)
		}
		text = strings.ReplaceAll(text, pub, newPub)
	}
	if !strings.Contains(text, "store_dir: /var/lib/nats/jetstream") {
		t.Fatal("accounts.conf no longer has the store_dir the test replaces")
	}
	text = strings.Replace(text, "store_dir: /var/lib/nats/jetstream", "store_dir: "+filepath.Join(dir, "js"), 1)
	confPath := filepath.Join(dir, "accounts.conf")
	if err := os.WriteFile(confPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	var cert, key string
	r.ca, cert, key = makeCerts(t, dir)
	port := freeport.TCP(t)
	cmd := exec.Command(bin, "-c", confPath, "-a", "127.0.0.1", "-p", fmt.Sprint(port), "-m", fmt.Sprint(freeport.TCP(t)),
		"--tls", "--tlscert", cert, "--tlskey", key)
	out, _ := os.Create(filepath.Join(dir, "nats.log"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); out.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "nats.log"))
			t.Fatalf("nats-server not ready: %s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.url = fmt.Sprintf("tls://127.0.0.1:%d", port)
	return r
}

// makeCerts writes a self-signed server certificate for 127.0.0.1 and its key; the certificate
// is also the CA file the clients trust.
func makeCerts(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	c, err := selfsigned.New([]string{"127.0.0.1"}, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	if err := os.WriteFile(certFile, c.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, c.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, certFile, keyFile
}

type client struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	denied chan error
}

// connect goes through natsconn as both binaries do, with the identity's nkey, its own inbox
// prefix (--nats-inbox-prefix _INBOX.<id>) and the test CA.
func (r *rig) connect(t *testing.T, ctx context.Context, id string) *client {
	t.Helper()
	c := &client{denied: make(chan error, 16)}
	nc, err := natsconn.Connect(ctx, natsconn.Config{
		URLs: []string{r.url}, NKeyFile: r.seeds[id], TLSCAFile: r.ca, Name: "lgs-" + id, InboxPrefix: "_INBOX." + id,
	}, zerolog.Nop(), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) {
			select {
			case c.denied <- err:
			default:
			}
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	for !nc.IsConnected() {
		if ctx.Err() != nil {
			t.Fatalf("%s never connected: %v", id, nc.LastError())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, ok := nc.TLSConnectionState(); ok != nil {
		t.Fatalf("%s: not a TLS connection: %v", id, ok)
	}
	c.nc = nc
	c.js, err = jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ensure makes the event stream and the buckets as the edge and the agent each do at startup,
// with c's permissions; who names c in the failure.
func (c *client) ensure(t *testing.T, ctx context.Context, who string) *kvstore.Buckets {
	t.Helper()
	if err := events.EnsureStream(ctx, c.js); err != nil {
		t.Fatalf("%s: ensure stream: %v", who, err)
	}
	b, err := kvstore.Ensure(ctx, c.js)
	if err != nil {
		t.Fatalf("%s: ensure buckets: %v", who, err)
	}
	return b
}

// refused publishes to subject and waits for the server's permission violation.
func (c *client) refused(t *testing.T, ctx context.Context, subject string) {
	t.Helper()
	if err := c.nc.Publish(subject, []byte("{}")); err != nil {
		t.Fatalf("publish %s: %v", subject, err)
	}
	c.violation(t, ctx, "publish to "+subject, subject)
}

// subscribeRefused subscribes to subject and waits for the server's permission violation.
func (c *client) subscribeRefused(t *testing.T, ctx context.Context, subject string) {
	t.Helper()
	sub, err := c.nc.Subscribe(subject, func(*nats.Msg) {})
	if err != nil {
		t.Fatalf("subscribe %s: %v", subject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	c.violation(t, ctx, "subscribe to "+subject, subject)
}

// violation waits up to 5 s for the server's permission violation about subject.
func (c *client) violation(t *testing.T, ctx context.Context, what, subject string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_ = c.nc.FlushWithContext(ctx)
	select {
	case err := <-c.denied:
		if !strings.Contains(err.Error(), subject) {
			t.Errorf("%s: violation for another subject: %v", what, err)
		}
	case <-ctx.Done():
		t.Errorf("%s was not refused", what)
	}
}

func TestAccountsConfPermissions(t *testing.T) {
	r := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	edge := r.connect(t, ctx, "edge-1")
	eb := edge.ensure(t, ctx, "edge")
	if _, err := kvstore.PutTTL(ctx, edge.js, kvstore.EdgesBucket, "edge-1", []byte(`{}`), 10*time.Second); err != nil {
		t.Fatalf("edge: heartbeat: %v", err)
	}
	if _, err := eb.Endpoints.Create(ctx, "app-1", []byte(`{"edge":"edge-1"}`)); err != nil {
		t.Fatalf("edge: claim endpoint: %v", err)
	}
	if err := events.NewPublisher(edge.js, "livegate-edgeproxy/edge-1").Publish(ctx, &livegatev1.Event{
		Type: livegatev1.EventType_EVENT_TYPE_APP_READY, InstanceId: "app-2", Pool: "default",
	}); err != nil {
		t.Fatalf("edge: event for its pool: %v", err)
	}
	routes := make(chan map[string]kvstore.Entry, 4)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go func() {
		_ = kvstore.Watch(wctx, eb.Routes, ">", kvstore.Handler{
			Snapshot: func(m map[string]kvstore.Entry) { routes <- m },
			Update:   func(e kvstore.Entry) { routes <- map[string]kvstore.Entry{e.Key: e} },
			Error:    func(err error) { t.Logf("edge routes watch: %v", err) },
		})
	}()

	agent := r.connect(t, ctx, "app-1")
	ab := agent.ensure(t, ctx, "agent")
	if err := events.NewPublisher(agent.js, "livegate-agent/app-1").Publish(ctx, &livegatev1.Event{
		Type: livegatev1.EventType_EVENT_TYPE_APP_READY, InstanceId: "app-1", Pool: "default",
	}); err != nil {
		t.Fatalf("agent: own event: %v", err)
	}
	if _, err := kvstore.PutTTL(ctx, agent.js, kvstore.RoutesBucket, "app-1", []byte(`{"r":1}`), 10*time.Second); err != nil {
		t.Fatalf("agent: own route: %v", err)
	}
	endpoint := make(chan kvstore.Entry, 4)
	go func() {
		_ = kvstore.Watch(wctx, ab.Endpoints, "app-1", kvstore.Handler{
			Snapshot: func(m map[string]kvstore.Entry) {
				if e, ok := m["app-1"]; ok {
					endpoint <- e
				}
			},
			Update: func(e kvstore.Entry) { endpoint <- e },
			Error:  func(err error) { t.Logf("agent endpoint watch: %v", err) },
		})
	}()
	select {
	case e := <-endpoint:
		if string(e.Value) != `{"edge":"edge-1"}` {
			t.Fatalf("agent read endpoint %q", e.Value)
		}
	case <-ctx.Done():
		t.Fatal("agent never saw its endpoint")
	}
	for seen := false; !seen; {
		select {
		case m := <-routes:
			_, seen = m["app-1"]
		case <-ctx.Done():
			t.Fatal("edge never saw the agent's route")
		}
	}

	for _, subject := range []string{
		"livegate.v1.events.default.app-2.app_ready",
		"livegate.v1.events.other.app-1.app_ready",
		"$KV.livegate_routes.app-2",
		"$KV.livegate_endpoints.app-1",
		"$KV.livegate_endpoints.app-2",
		"$KV.livegate_edges.edge-1",
		"$JS.API.STREAM.DELETE.KV_livegate_routes",
		"$JS.API.STREAM.PURGE.LIVEGATE_EVENTS",
		"$JS.API.CONSUMER.CREATE.KV_livegate_endpoints.x.$KV.livegate_endpoints.app-2",
		// Its refusals through a consumer of another name, and any other consumer of the
		// events stream: a pull would take that consumer's events from its owner.
		"$JS.API.CONSUMER.CREATE.LIVEGATE_EVENTS.x.livegate.v1.events.*.app-1.route_refused",
		"$JS.API.CONSUMER.MSG.NEXT.LIVEGATE_EVENTS.route-refusals-app-2",
		"$JS.API.CONSUMER.MSG.NEXT.LIVEGATE_EVENTS.x",
		"$JS.API.CONSUMER.DELETE.LIVEGATE_EVENTS.route-refusals-app-2",
		"$JS.API.CONSUMER.INFO.LIVEGATE_EVENTS.route-refusals-app-1",
	} {
		agent.refused(t, ctx, subject)
	}
	for _, subject := range []string{"$KV.livegate_routes.app-1", "$KV.livegate_edges.edge-2", "livegate.v1.events.other.app-9.app_ready"} {
		edge.refused(t, ctx, subject)
	}
	// The agent follows the edges' refusals of its own route from the stream (as the agent does:
	// events.Follow), and only those.
	if err := events.NewPublisher(edge.js, "livegate-edgeproxy/edge-1").Publish(ctx, &livegatev1.Event{
		Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED, InstanceId: "app-1", Pool: "default",
		Details: &livegatev1.Event_RouteRefused{RouteRefused: &livegatev1.RouteRefused{EdgeId: "edge-1", Reason: "test"}},
	}); err != nil {
		t.Fatalf("edge: refusal event: %v", err)
	}
	follow := func(instance string) (<-chan *livegatev1.Event, <-chan error, context.CancelFunc) {
		got, failed := make(chan *livegatev1.Event, 4), make(chan error, 1)
		fctx, fcancel := context.WithCancel(ctx)
		go func() {
			failed <- events.NewFollower(agent.js, "route-refusals-"+instance, "livegate.v1.events.*."+instance+".route_refused", events.FollowHandler{
				Event: func(_ string, ev *livegatev1.Event) { got <- ev },
			}).Follow(fctx)
		}()
		return got, failed, fcancel
	}
	// Each start deletes its consumer and makes it anew; the second finds the first's left.
	for _, start := range []string{"first start", "second start"} {
		refusals, failed, stop := follow("app-1")
		select {
		case ev := <-refusals:
			if ev.GetRouteRefused().GetReason() != "test" {
				t.Errorf("%s: agent read refusal %v", start, ev)
			}
		case err := <-failed:
			t.Errorf("%s: agent may not follow its refusals: %v", start, err)
		case err := <-agent.denied:
			t.Errorf("%s: agent may not follow its refusals: %v", start, err)
		case <-ctx.Done():
			t.Errorf("%s: agent got no refusal of its route", start)
		}
		stop()
		if err := <-failed; err != nil {
			t.Errorf("%s: agent following its refusals: %v", start, err)
		}
	}
	select {
	case err := <-agent.denied:
		t.Errorf("agent following its refusals was denied: %v", err)
	default:
	}
	others, failed, stop := follow("app-2")
	select {
	case ev := <-others:
		t.Errorf("agent read another instance's refusal %v", ev)
	case err := <-failed:
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), "permission") {
			t.Errorf("following another instance's refusals failed, but not on a permission: %v", err)
		}
	case err := <-agent.denied:
		if !strings.Contains(err.Error(), "CONSUMER.DELETE.LIVEGATE_EVENTS.route-refusals-app-2") && !strings.Contains(err.Error(), "CONSUMER.CREATE.LIVEGATE_EVENTS") {
			t.Errorf("following another instance's refusals: violation for another subject: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("agent may follow another instance's refusals")
	}
	stop()
	// Nobody reads another's replies and watch deliveries (no shared inbox, no other prefix), nor
	// every event.
	for _, subject := range []string{"_INBOX.>", "_INBOX.edge-1.>", "_INBOX.app-2.>", "livegate.v1.events.>"} {
		agent.subscribeRefused(t, ctx, subject)
	}

	if e, err := eb.Routes.Get(ctx, "app-2"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("route of app-2 written by app-1: %v %v", e, err)
	}
	if e, err := eb.Endpoints.Get(ctx, "app-1"); err != nil || string(e.Value()) != `{"edge":"edge-1"}` {
		t.Errorf("endpoint of app-1 changed: %v %v", e, err)
	}
	// A watch past its flow-control window (about 2 MB outstanding) goes on only if its client
	// may answer the server's flow-control requests.
	const bulk, size = 2500, 1024
	last := fmt.Sprintf(`{"n":%d}`, bulk)
	watchTill := func(who string, kv jetstream.KeyValue, key string) <-chan struct{} {
		done := make(chan struct{})
		var once sync.Once
		see := func(e kvstore.Entry) {
			if string(e.Value) == last {
				once.Do(func() { close(done) })
			}
		}
		go func() {
			_ = kvstore.Watch(wctx, kv, key, kvstore.Handler{
				Snapshot: func(m map[string]kvstore.Entry) {
					if e, ok := m[key]; ok {
						see(e)
					}
				},
				Update: see,
				Error:  func(err error) { t.Logf("%s watch: %v", who, err) },
			})
		}()
		return done
	}
	pad := strings.Repeat("x", size)
	for _, c := range []struct {
		who     string
		watched <-chan struct{}
		put     func(i int, v []byte) error
	}{
		{"edge (routes)", watchTill("edge", eb.Routes, "app-1"), func(_ int, v []byte) error {
			_, err := ab.Routes.Put(ctx, "app-1", v)
			return err
		}},
		{"agent (its endpoint)", watchTill("agent", ab.Endpoints, "app-1"), func(_ int, v []byte) error {
			_, err := eb.Endpoints.Put(ctx, "app-1", v)
			return err
		}},
	} {
		for i := range bulk {
			v := []byte(`{"pad":"` + pad + `"}`)
			if i == bulk-1 {
				v = []byte(last)
			}
			if err := c.put(i, v); err != nil {
				t.Fatalf("%s: put %d: %v", c.who, i, err)
			}
		}
		select {
		case <-c.watched:
		case <-time.After(20 * time.Second):
			t.Errorf("%s: the watch stopped before the last of %d KiB of updates", c.who, bulk*size/1024)
		}
	}
	if err := ab.Routes.Delete(ctx, "app-1"); err != nil {
		t.Errorf("agent: delete own route: %v", err)
	}
	if !agent.nc.IsConnected() || !edge.nc.IsConnected() {
		t.Error("a permission violation closed a connection")
	}
}
