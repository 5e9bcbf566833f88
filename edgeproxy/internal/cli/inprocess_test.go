package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
	"github.com/livegate/livegate/pkg/freeport"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/logbuf"
	"github.com/livegate/livegate/pkg/natstest"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// inProcessEdge is `run` in the test process with an embedded NATS server, a supervised HAProxy
// on 127.0.0.1 and --media=off.
type inProcessEdge struct {
	dir               string
	natsPort, sigPort int
	admin             string
	logs              *logbuf.Buffer
	stop              func()
}

// startInProcessEdge starts the edge with id and the extra flags, stopped (once) at the end of
// the test, and waits for /healthz.
func startInProcessEdge(t *testing.T, id string, extra ...string) *inProcessEdge {
	t.Helper()
	bin := haproxytest.Binary(t)
	e := &inProcessEdge{dir: haproxytest.Dir(t), natsPort: freeport.TCP(t), sigPort: freeport.TCP(t), logs: &logbuf.Buffer{}}
	adminPort := freeport.TCP(t)
	e.admin = fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	args := append([]string{
		fmt.Sprintf("--nats-embedded=127.0.0.1:%d", e.natsPort), "--state-dir", e.dir, "--haproxy-binary", bin, "--tls-self-signed",
		"--signaling-bind", "127.0.0.1", "--signaling-port", strconv.Itoa(e.sigPort), "--admin-addr", fmt.Sprintf("127.0.0.1:%d", adminPort),
		"--media=off", "--edge-id", id, "--backend-cidrs", "127.0.0.0/8", "--backend-ports", "1024-65535",
		"--haproxy-stop-on-exit", "--log-format", "json",
	}, extra...)
	go func() { done <- RunCommand(Hooks{})(ctx, args, io.Discard, e.logs) }()
	stopped := false
	e.stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if code := <-done; code != 0 {
				t.Errorf("edge exited %d: %s", code, e.logs.String())
			}
		}
	}
	t.Cleanup(e.stop)
	waitFor(t, "healthz", func() bool { code, _ := get(e.admin + "/healthz"); return code == http.StatusOK })
	return e
}

// putPoolRoute writes a pool route for session sid to backend into the edge's NATS.
func (e *inProcessEdge) putPoolRoute(t *testing.T, key, sid string, backend haproxytest.Backend) {
	t.Helper()
	_, js := natstest.Connect(t, fmt.Sprintf("nats://127.0.0.1:%d", e.natsPort))
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, kvstore.RoutesBucket)
	if err != nil {
		t.Fatal(err)
	}
	data, err := wire.Marshal(&livegatev1.Route{SessionId: sid, SignalingBackend: backend.Addr.String(), Pool: "default"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, key, data); err != nil {
		t.Fatal(err)
	}
}
