package reconcile_test

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/livegate/livegate/edgeproxy/internal/mediaplane"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/mediaplanetest"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/edgeproxy/internal/reconcile"
	"github.com/livegate/livegate/pkg/logbuf"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// TestRefusalLoggedOncePerChange runs an edge with one public port: a second media route is
// refused for want of ports. The passes that follow (a starved edge looks again every heartbeat)
// and a lease renewal of the refused route (a new revision of the same value) log nothing more;
// a change of the route is logged again. Instance ids of 3 KB (a key) and 10 KB
// (a value's instance_id) are refused with short log lines.
func TestRefusalLoggedOncePerChange(t *testing.T) {
	e := newEnv(t)
	cfg := config("edge-a", "default")
	plane, err := mediaplane.New(mediaplane.Config{
		PublicIP: netip.MustParseAddr("198.18.1.1"), Ports: portalloc.Range{First: 10500, Last: 10500}, SNAT: true,
		BackendCIDRs: cfg.Policy.BackendCIDRs, BackendPorts: portalloc.Range{First: 1024, Last: 65535},
	}, append(mediaplanetest.New().Options(), mediaplane.WithConntrack(nopCleaner{}))...)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	runLoop(t, e, cfg, reconcile.Deps{
		Driver: &recordingDriver{m: map[string]string{}}, Media: plane,
		Metrics: reconcile.NewMetrics(prometheus.NewRegistry()), Log: zerolog.New(logs).Level(zerolog.DebugLevel),
	})

	count := func(message, instance string) (n int) {
		for _, line := range strings.Split(logs.String(), "\n") {
			var l struct {
				Message    string `json:"message"`
				InstanceID string `json:"instance_id"`
			}
			if json.Unmarshal([]byte(line), &l) == nil && l.Message == message && (instance == "" || l.InstanceID == instance) {
				n++
			}
		}
		return n
	}
	// waitPasses waits for n more passes than have run so far.
	waitPasses := func(n int) {
		t.Helper()
		base := count("reconcile pass", "")
		waitFor(t, "passes", func() bool { return count("reconcile pass", "") >= base+n })
	}
	route := func(session string, media ...string) *livegatev1.Route {
		return &livegatev1.Route{SessionId: session, SignalingBackend: "127.0.0.1:30000", MediaBackends: media, EdgeId: "edge-a"}
	}
	putRoute(t, e, "i1", route("s1", "127.0.0.1:31000"))
	waitFor(t, "i1 endpoint", func() bool { return endpointOf(t, e, "i1") != nil })
	putRoute(t, e, "i2", route("s2", "127.0.0.1:31001"))
	waitFor(t, "i2 refused", func() bool { return count("route refused", "i2") == 1 })
	waitPasses(4)
	putRoute(t, e, "i2", route("s2", "127.0.0.1:31001"))
	waitPasses(4)
	if n := count("route refused", "i2"); n != 1 {
		t.Fatalf("i2 refused %d times in the log across passes and a renewal, want once", n)
	}
	putRoute(t, e, "i2", route("s2", "127.0.0.1:31002"))
	waitFor(t, "the changed route refused again", func() bool { return count("route refused", "i2") == 2 })

	// A NATS control line holds at most 4 KB: a longer key cannot reach the edge, a longer
	// instance_id field can.
	putRoute(t, e, strings.Repeat("k", 3000), route("s3"))
	waitFor(t, "the long key refused", func() bool { return strings.Contains(logs.String(), "kkk…(3000 bytes)") })
	long := route("s4")
	long.InstanceId = strings.Repeat("j", 10<<10)
	putRoute(t, e, "i4", long)
	waitFor(t, "the long instance_id refused", func() bool { return strings.Contains(logs.String(), "jjj…(10240 bytes)") })
	for _, line := range strings.Split(logs.String(), "\n") {
		if len(line) > 2000 {
			t.Errorf("log line of %d bytes: %.300s…", len(line), line)
		}
	}
}
