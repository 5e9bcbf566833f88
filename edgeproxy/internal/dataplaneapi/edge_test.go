package dataplaneapi_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/freeport"
	"github.com/livegate/livegate/pkg/logbuf"
	"github.com/livegate/livegate/pkg/natstest"
	"github.com/rs/zerolog"

	"github.com/livegate/livegate/edgeproxy/internal/cli"
	"github.com/livegate/livegate/edgeproxy/internal/dataplaneapi"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// TestEdgeWithDataplaneAPIDriver runs the edge in-process with --driver dataplaneapi, wired as
// main.go wires it, against the fake Data Plane API in front of a real HAProxy: the edge sets up
// the frontend and backend through a transaction, then a route put in NATS becomes routable.
func TestEdgeWithDataplaneAPIDriver(t *testing.T) {
	e := newRealAPI(t)
	natsPort, adminPort := freeport.TCP(t), freeport.TCP(t)
	pw := filepath.Join(e.Dir, "dpapi.pw")
	if err := os.WriteFile(pw, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var flags dataplaneapi.Flags
	hooks := cli.Hooks{Drivers: map[string]cli.DriverFactory{"dataplaneapi": {
		Flags: flags.Register,
		New: func(_ context.Context, c haproxy.Config, log zerolog.Logger) (haproxy.Driver, error) {
			return flags.Driver(c, log, fastOpts()...)
		},
	}}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var logs logbuf.Buffer
	go func() {
		done <- cli.RunCommand(hooks)(ctx, []string{
			"--driver", "dataplaneapi", "--dataplaneapi-url", e.Srv.URL, "--dataplaneapi-user", user, "--dataplaneapi-password-file", pw,
			"--haproxy-map", e.MapFile, "--tls-cert", e.Cert,
			fmt.Sprintf("--nats-embedded=127.0.0.1:%d", natsPort), "--state-dir", filepath.Join(e.Dir, "state"),
			"--signaling-bind", "127.0.0.1", "--signaling-port", strconv.Itoa(e.Port), "--admin-addr", fmt.Sprintf("127.0.0.1:%d", adminPort),
			"--media=off", "--edge-id", "dpapi", "--backend-cidrs", "127.0.0.0/8", "--backend-ports", "1024-65535",
			"--miss-limit", "1000", "--log-format", "json",
		}, &logs, &logs)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("edge exited %d: %s", code, logs.String())
		}
	})
	waitFor(t, &logs, "edge healthy", func() bool {
		res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", adminPort))
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})

	_, js := natstest.Connect(t, fmt.Sprintf("nats://127.0.0.1:%d", natsPort))
	kv, err := js.KeyValue(ctx, kvstore.RoutesBucket)
	if err != nil {
		t.Fatal(err)
	}
	b := haproxytest.StartBackend(t, "app", false)
	data, err := wire.Marshal(&livegatev1.Route{SessionId: "dp-1", SignalingBackend: b.Addr.String(), Pool: "default"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "i-dp", data); err != nil {
		t.Fatal(err)
	}
	waitFor(t, &logs, "route routable through haproxy", func() bool {
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		defer dcancel()
		res, err := haproxytest.Dial(dctx, e.Port, "/sign_in", "dp-1")
		return err == nil && res.Message == "app /sign_in" && res.Subprotocol == "x-nv-sessionid.dp-1"
	})
	// The fake records a request after HAProxy has the entry: wait for the record too.
	waitFor(t, &logs, "route added through the data plane api", func() bool { return count(e.Srv, "addMapEntry") > 0 })
	if n := count(e.Srv, "startTransaction"); n != 1 {
		t.Fatalf("%d transactions, want 1", n)
	}
}

func waitFor(t *testing.T, logs *logbuf.Buffer, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 30s; edge log:\n%s", what, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
