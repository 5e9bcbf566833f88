package dataplaneapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/livegate/livegate/edgeproxy/internal/dataplaneapi"
	"github.com/livegate/livegate/edgeproxy/internal/dataplaneapi/dpatest"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
)

const (
	user     = "livegate"
	password = "s3cret-pa55"
	mapFile  = "/etc/haproxy/maps/livegate-sessions.map"
	mapName  = "livegate-sessions"
)

// testConfig is the edge's HAProxy configuration the set-up tests ask for.
func testConfig() haproxy.Config {
	return haproxy.Config{
		Socket: "/run/haproxy/admin.sock", MapFile: mapFile, CertFile: "/etc/haproxy/livegate/tls.pem",
		BindAddr: "0.0.0.0", Port: 48322, TunnelTimeout: time.Hour, HardStopAfter: time.Minute, MissLimit: 20,
	}
}

func testProxy(t *testing.T) *dataplaneapi.Proxy {
	t.Helper()
	p, err := dataplaneapi.LivegateProxy(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	return &p
}

// startAPI starts the fake Data Plane API with the tests' credentials and, unless o names
// others, an empty session map.
func startAPI(t testing.TB, o dpatest.Options) *dpatest.Server {
	t.Helper()
	if o.User == "" {
		o.User = user
	}
	if o.Password == "" {
		o.Password = password
	}
	if o.Maps == nil {
		o.Maps = dpatest.NewMemoryMaps(mapName)
	}
	return dpatest.Start(t, o)
}

func fastOpts(extra ...dataplaneapi.Option) []dataplaneapi.Option {
	return append([]dataplaneapi.Option{
		dataplaneapi.WithRetry(4, time.Millisecond),
		dataplaneapi.WithReloadPoll(time.Millisecond, 10*time.Second),
		dataplaneapi.WithRequestTimeout(5 * time.Second),
	}, extra...)
}

func newDriver(t testing.TB, srv *dpatest.Server, proxy *dataplaneapi.Proxy, opts ...dataplaneapi.Option) *dataplaneapi.Driver {
	t.Helper()
	d, err := dataplaneapi.New(dataplaneapi.Config{URL: srv.URL, User: user, Password: password, Map: mapName, Proxy: proxy}, fastOpts(opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// checkContract fails the test when a request or an answer broke the OpenAPI document, or a
// transaction was left open.
func checkContract(t *testing.T, srv *dpatest.Server) {
	t.Helper()
	for _, v := range srv.Violations() {
		t.Errorf("openapi violation: %s", v)
	}
	if n := srv.OpenTransactions(); n != 0 {
		t.Errorf("%d transactions left open", n)
	}
}

func count(srv *dpatest.Server, op string) int {
	n := 0
	for _, r := range srv.Requests() {
		if r.OperationID == op {
			n++
		}
	}
	return n
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestApplyAndList(t *testing.T) {
	maps := dpatest.NewMemoryMaps(mapName)
	srv := startAPI(t, dpatest.Options{Maps: maps})
	d := newDriver(t, srv, nil)
	ctx := ctxT(t)

	if err := d.Apply(ctx, map[string]string{"a": "10.0.0.1:30000", "b": "10.0.0.2:30001", "c": "[2001:db8::1]:30002"}, nil); err != nil {
		t.Fatal(err)
	}
	// Replace one, delete one, delete one that is not there; a key in both set and del is set.
	if err := d.Apply(ctx, map[string]string{"a": "10.0.0.9:30009", "c": "10.0.0.3:30003"}, []string{"b", "missing", "c"}); err != nil {
		t.Fatal(err)
	}
	got, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": "10.0.0.9:30009", "c": "10.0.0.3:30003"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("List = %v, want %v", got, want)
	}
	entries, _ := maps.Show(ctx, mapName)
	if len(entries) != 2 {
		t.Fatalf("map holds %v: a replace must not add a second entry", entries)
	}
	// Each Apply's last change carries force_sync, and only that one.
	synced := 0
	for _, r := range srv.Requests() {
		if r.Query.Get("force_sync") == "true" && r.Status < 300 {
			synced++
		}
		if r.Query.Get("map") != mapName {
			t.Errorf("%s %s: map=%q", r.Method, r.Path, r.Query.Get("map"))
		}
	}
	if synced != 2 || maps.Syncs(mapName) != 2 {
		t.Errorf("%d calls with force_sync and %d syncs for two batches, want 2 and 2", synced, maps.Syncs(mapName))
	}
	if count(srv, "startTransaction") != 0 {
		t.Error("a driver without a proxy started a transaction")
	}
	checkContract(t, srv)
}

func TestApplyRefusesBadInputBeforeSending(t *testing.T) {
	srv := startAPI(t, dpatest.Options{})
	d := newDriver(t, srv, nil)
	for _, tc := range []struct {
		set map[string]string
		del []string
	}{
		{set: map[string]string{"a b": "10.0.0.1:1"}},
		{set: map[string]string{"a;show": "10.0.0.1:1"}},
		{set: map[string]string{"ok": "10.0.0.1"}},
		{set: map[string]string{"ok": "10.0.0.1:1 x"}},
		{del: []string{"../x"}},
		{set: map[string]string{"ok": "10.0.0.1:1", strings.Repeat("x", 129): "10.0.0.1:1"}},
	} {
		if err := d.Apply(ctxT(t), tc.set, tc.del); err == nil {
			t.Errorf("Apply(%v, %v) accepted bad input", tc.set, tc.del)
		}
	}
	if n := len(srv.Requests()); n != 0 {
		t.Fatalf("%d requests sent for bad input", n)
	}
}

func TestAddOfExistingKeyReplaces(t *testing.T) {
	maps := dpatest.NewMemoryMaps(mapName)
	ctx := ctxT(t)
	_ = maps.Add(ctx, mapName, "a", "10.0.0.1:30000")
	srv := startAPI(t, dpatest.Options{Maps: maps})
	d := newDriver(t, srv, nil)
	if err := d.Apply(ctx, map[string]string{"a": "10.0.0.2:30000"}, nil); err != nil {
		t.Fatal(err)
	}
	if e, _ := maps.Show(ctx, mapName); len(e) != 1 || e[0].Value != "10.0.0.2:30000" {
		t.Fatalf("map = %v", e)
	}
	if count(srv, "addMapEntry") != 1 || count(srv, "replaceRuntimeMapEntry") != 1 {
		t.Fatalf("requests %v: want one add (409) then one replace", srv.Requests())
	}
	checkContract(t, srv)
}

func TestTransientFailuresAreRetried(t *testing.T) {
	srv := startAPI(t, dpatest.Options{})
	d := newDriver(t, srv, nil, dataplaneapi.WithRequestTimeout(200*time.Millisecond))
	ctx := ctxT(t)
	srv.AddFault(dpatest.Fault{OperationID: "addMapEntry", Status: http.StatusServiceUnavailable, Count: 2})
	srv.AddFault(dpatest.Fault{OperationID: "deleteRuntimeMapEntry", Status: 0, Count: 1}) // hangs: a timeout
	srv.AddFault(dpatest.Fault{OperationID: "showRuntimeMap", Status: http.StatusBadGateway, Count: 1})
	if err := d.Apply(ctx, map[string]string{"a": "10.0.0.1:30000", "b": "10.0.0.2:30000"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(ctx, nil, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	got, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, map[string]string{"a": "10.0.0.1:30000"}) {
		t.Fatalf("List = %v", got)
	}
	checkContract(t, srv)
}

func TestPersistentServerErrorIsReportedWithTheAPIMessage(t *testing.T) {
	srv := startAPI(t, dpatest.Options{})
	d := newDriver(t, srv, nil)
	srv.AddFault(dpatest.Fault{OperationID: "addMapEntry", Status: http.StatusInternalServerError, Count: 100, Message: "runtime api: connection refused"})
	err := d.Apply(ctxT(t), map[string]string{"a": "10.0.0.1:30000"}, nil)
	var ae *dataplaneapi.APIError
	if !errors.As(err, &ae) || ae.Status != 500 || !strings.Contains(err.Error(), "runtime api: connection refused") {
		t.Fatalf("err = %v, want the API's 500 and its message", err)
	}
	if n := count(srv, "addMapEntry"); n != 4 {
		t.Fatalf("%d tries, want 4", n)
	}
	checkContract(t, srv)
}

func TestUnauthorizedIsFinal(t *testing.T) {
	srv := startAPI(t, dpatest.Options{Password: "other"})
	d := newDriver(t, srv, testProxy(t))
	err := d.Apply(ctxT(t), map[string]string{"a": "10.0.0.1:30000", "b": "10.0.0.1:30001"}, nil)
	var ae *dataplaneapi.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		t.Fatalf("err = %v, want 401", err)
	}
	if strings.Contains(err.Error(), password) {
		t.Fatal("error shows the password")
	}
	if n := len(srv.Requests()); n != 1 {
		t.Fatalf("%d requests after a 401, want 1", n)
	}
	d = newDriver(t, srv, nil)
	if _, err := d.List(ctxT(t)); statusOf(err) != 401 {
		t.Fatalf("List: %v", err)
	}
	checkContract(t, srv)
}

func statusOf(err error) int {
	var ae *dataplaneapi.APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

func TestSetupCreatesOnceAndOnlyWhenNeeded(t *testing.T) {
	srv := startAPI(t, dpatest.Options{ReloadPolls: 3})
	ctx := ctxT(t)
	d := newDriver(t, srv, testProxy(t))
	if err := d.Apply(ctx, map[string]string{"a": "10.0.0.1:30000"}, nil); err != nil {
		t.Fatal(err)
	}
	if v := srv.Version(); v != 2 {
		t.Fatalf("version %d after one transaction, want 2", v)
	}
	if n := count(srv, "getReload"); n != 4 {
		t.Fatalf("reload read %d times, want 3 in_progress and 1 succeeded", n)
	}
	// Further calls, and a new driver on the same configuration, change nothing.
	if _, err := d.List(ctx); err != nil {
		t.Fatal(err)
	}
	if err := newDriver(t, srv, testProxy(t)).Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(srv, "startTransaction"); n != 1 {
		t.Fatalf("%d transactions, want 1", n)
	}
	if v := srv.Version(); v != 2 {
		t.Fatalf("version %d, want 2", v)
	}
	checkContract(t, srv)
}

func TestSetupRepairsDrift(t *testing.T) {
	srv := startAPI(t, dpatest.Options{})
	ctx := ctxT(t)
	if err := newDriver(t, srv, testProxy(t)).Setup(ctx); err != nil {
		t.Fatal(err)
	}
	want, err := srv.Render()
	if err != nil {
		t.Fatal(err)
	}
	srv.Edit(func(c *dpatest.Config) {
		fe := "frontend/" + haproxy.Frontend
		c.ReqRules[fe][1]["deny_status"] = 403
		c.ReqRules[fe] = append(c.ReqRules[fe], map[string]any{"index": len(c.ReqRules[fe]), "type": "deny"})
		delete(c.Servers, haproxy.Backend)
		c.Binds[haproxy.Frontend][0]["port"] = 8443
		c.Backends[0]["tunnel_timeout"] = 1000
	})
	if err := newDriver(t, srv, testProxy(t)).Setup(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := srv.Render()
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("after repair:\n%s\nwant:\n%s", got, want)
	}
	if n := count(srv, "startTransaction"); n != 2 {
		t.Fatalf("%d transactions, want 2", n)
	}
	checkContract(t, srv)
}

func TestSetupStartsOverOnVersionConflicts(t *testing.T) {
	srv := startAPI(t, dpatest.Options{})
	// Someone else changes the configuration while our transaction is open: the commit of the
	// outdated transaction gets 406, and the next start on the version read before gets 409.
	bumped := 0
	srv.OnRequest(func(op string) {
		if op == "createFrontend" && bumped < 1 {
			bumped++
			srv.BumpVersion()
		}
	})
	srv.AddFault(dpatest.Fault{OperationID: "startTransaction", Status: http.StatusConflict, Count: 1, Message: "version mismatch"})
	if err := newDriver(t, srv, testProxy(t)).Setup(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if n := count(srv, "deleteTransaction"); n != 1 {
		t.Fatalf("outdated transaction deleted %d times, want 1", n)
	}
	if n := count(srv, "commitTransaction"); n != 2 {
		t.Fatalf("%d commits, want 2", n)
	}
	if _, err := srv.Render(); err != nil {
		t.Fatal(err)
	}
	checkContract(t, srv)
}

func TestSetupGivesUpAfterBoundedConflicts(t *testing.T) {
	srv := startAPI(t, dpatest.Options{})
	srv.AddFault(dpatest.Fault{OperationID: "startTransaction", Status: http.StatusConflict, Count: 100, Message: "version mismatch, given: 1, found: 2"})
	err := newDriver(t, srv, testProxy(t), dataplaneapi.WithTransactionAttempts(3)).Setup(ctxT(t))
	if statusOf(err) != http.StatusConflict || !strings.Contains(err.Error(), "version mismatch") {
		t.Fatalf("err = %v", err)
	}
	if n := count(srv, "startTransaction"); n != 3 {
		t.Fatalf("%d starts, want 3", n)
	}
	checkContract(t, srv)
}

func TestFailureInsideTransactionRollsBack(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fault  dpatest.Fault
		starts int
	}{
		{"bad request is final", dpatest.Fault{OperationID: "createBind", Status: http.StatusBadRequest, Count: 100, Message: "bind: unknown certificate"}, 1},
		{"server error is retried, bounded", dpatest.Fault{OperationID: "createHTTPRequestRule", Status: http.StatusInternalServerError, Count: 100, Message: "cannot write configuration"}, 3},
		{"timeout is retried, bounded", dpatest.Fault{OperationID: "createServer", Status: 0, Count: 100}, 3},
		{"failed commit", dpatest.Fault{OperationID: "commitTransaction", Status: http.StatusBadRequest, Count: 100, Message: "haproxy -c: parsing error"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startAPI(t, dpatest.Options{})
			srv.AddFault(tc.fault)
			d := newDriver(t, srv, testProxy(t), dataplaneapi.WithRequestTimeout(300*time.Millisecond))
			err := d.Apply(ctxT(t), map[string]string{"a": "10.0.0.1:30000"}, nil)
			if err == nil {
				t.Fatal("Apply succeeded")
			}
			if tc.fault.Message != "" && !strings.Contains(err.Error(), tc.fault.Message) {
				t.Fatalf("err = %v, want the API's message %q", err, tc.fault.Message)
			}
			if n := count(srv, "startTransaction"); n != tc.starts {
				t.Fatalf("%d transactions started, want %d", n, tc.starts)
			}
			if n := count(srv, "deleteTransaction"); n != tc.starts {
				t.Fatalf("%d rollbacks, want %d", n, tc.starts)
			}
			if v := srv.Version(); v != 1 {
				t.Fatalf("configuration changed to version %d", v)
			}
			if n := count(srv, "addMapEntry"); n != 0 {
				t.Fatal("map changed before the set-up succeeded")
			}
			checkContract(t, srv)
		})
	}
}

func TestFailedReloadIsReported(t *testing.T) {
	srv := startAPI(t, dpatest.Options{
		OnReload: func(string) error { return errors.New("[ALERT] cannot open map file") }})
	err := newDriver(t, srv, testProxy(t)).Setup(ctxT(t))
	if err == nil || !strings.Contains(err.Error(), "cannot open map file") {
		t.Fatalf("err = %v", err)
	}
	checkContract(t, srv)
}

// TestProxyMatchesRenderedSections: the objects the transaction creates are the frontend and
// backend the runtime driver's configuration has, line for line after normalising units.
func TestProxyMatchesRenderedSections(t *testing.T) {
	srv := startAPI(t, dpatest.Options{})
	if err := newDriver(t, srv, testProxy(t)).Setup(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	got, err := srv.Render()
	if err != nil {
		t.Fatal(err)
	}
	want, err := haproxy.RenderSections(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	gs, ws := dpatest.Sections(got), dpatest.Sections(want)
	if !reflect.DeepEqual(gs, ws) {
		t.Fatalf("data plane api configuration:\n%v\nruntime driver configuration:\n%v", gs, ws)
	}
}

func TestNewChecksConfig(t *testing.T) {
	for _, c := range []dataplaneapi.Config{
		{URL: "127.0.0.1:5555", User: "u", Map: mapName},
		{URL: "http://u:p@127.0.0.1:5555", User: "u", Map: mapName},
		{URL: "http://127.0.0.1:5555", Map: mapName},
		{URL: "http://127.0.0.1:5555", User: "u", Map: "a;b"},
	} {
		if _, err := dataplaneapi.New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
}

func TestReadPasswordFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(p, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := dataplaneapi.ReadPasswordFile(p); err != nil || got != "s3cret" {
		t.Fatalf("got %q, %v", got, err)
	}
	if err := os.WriteFile(p, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := dataplaneapi.ReadPasswordFile(p); err == nil {
		t.Fatal("empty password accepted")
	}
}

func TestFlagsBuildADriver(t *testing.T) {
	srv := startAPI(t, dpatest.Options{})
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	var f dataplaneapi.Flags
	f.Register(fs)
	if err := fs.Parse([]string{"--dataplaneapi-url", srv.URL + "/v2/", "--dataplaneapi-user", user}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Driver(testConfig(), zerolog.Nop()); err == nil {
		t.Fatal("driver built without a password file")
	}
	if err := fs.Parse([]string{"--dataplaneapi-password-file", pw}); err != nil {
		t.Fatal(err)
	}
	d, err := f.Driver(testConfig(), zerolog.Nop(), fastOpts()...)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(ctxT(t), map[string]string{"a": "10.0.0.1:30000"}, nil); err != nil {
		t.Fatal(err)
	}
	if count(srv, "commitTransaction") != 1 {
		t.Fatal("no set-up transaction")
	}
	checkContract(t, srv)
}

func TestCancelledSetupStillRollsBack(t *testing.T) {
	srv := startAPI(t, dpatest.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv.OnRequest(func(op string) {
		if op == "createFrontend" {
			cancel()
		}
	})
	err := newDriver(t, srv, testProxy(t)).Setup(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if n := count(srv, "deleteTransaction"); n != 1 {
		t.Fatalf("%d rollbacks, want 1", n)
	}
	checkContract(t, srv)
}

func TestSetupStartsOverWhenAnObjectMoved(t *testing.T) {
	srv := startAPI(t, dpatest.Options{})
	srv.AddFault(dpatest.Fault{OperationID: "createBind", Status: http.StatusConflict, Count: 1, Message: "bind livegate already exists"})
	srv.AddFault(dpatest.Fault{OperationID: "commitTransaction", Status: http.StatusNotFound, Count: 1, Message: "transaction not found"})
	if err := newDriver(t, srv, testProxy(t)).Setup(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if n := count(srv, "startTransaction"); n != 3 {
		t.Fatalf("%d transactions, want 3", n)
	}
	checkContract(t, srv)
}

func TestReloadStuckInProgressTimesOut(t *testing.T) {
	srv := startAPI(t, dpatest.Options{ReloadPolls: 1 << 30})
	err := newDriver(t, srv, testProxy(t), dataplaneapi.WithReloadPoll(time.Millisecond, 50*time.Millisecond)).Setup(ctxT(t))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "in_progress") {
		t.Fatalf("err = %v", err)
	}
	checkContract(t, srv)
}

// A large set onto a map that holds entries adds the missing keys one by one (a payload might
// replace the map); onto an empty map it is one payload, and a failed payload falls back to
// per-entry adds.
func TestLargeSetsSkipWhatIsThere(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		preset, failBulk     bool
		wantSingle, wantBulk int
	}{
		{"map holds entries", true, false, 299, 0}, // 298 missing, and k001 (409, then replaced)
		{"empty map", false, false, 0, 1},
		{"empty map, payload fails", false, true, 300, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			maps := dpatest.NewMemoryMaps(mapName)
			ctx := ctxT(t)
			if tc.preset {
				_ = maps.Add(ctx, mapName, "k000", "10.0.0.1:30000")
				_ = maps.Add(ctx, mapName, "k001", "10.9.9.9:30000")
			}
			srv := startAPI(t, dpatest.Options{Maps: maps})
			if tc.failBulk {
				srv.AddFault(dpatest.Fault{OperationID: "addPayloadRuntimeMap", Status: http.StatusInternalServerError, Count: 1})
			}
			set := map[string]string{}
			for i := range 300 {
				set[fmt.Sprintf("k%03d", i)] = "10.0.0.1:30000"
			}
			if err := newDriver(t, srv, nil).Apply(ctx, set, nil); err != nil {
				t.Fatal(err)
			}
			if e, _ := maps.Show(ctx, mapName); len(e) != 300 {
				t.Fatalf("map has %d entries, want 300", len(e))
			}
			got, err := newDriver(t, srv, nil).List(ctx)
			if err != nil || !reflect.DeepEqual(got, set) {
				t.Fatalf("List = %v, %v", got, err)
			}
			if n, m := count(srv, "addMapEntry"), count(srv, "addPayloadRuntimeMap"); n != tc.wantSingle || m != tc.wantBulk {
				t.Fatalf("%d single adds and %d payloads, want %d and %d", n, m, tc.wantSingle, tc.wantBulk)
			}
			checkContract(t, srv)
		})
	}
}

func TestLostStartAnswerLeavesNoTransactionOpen(t *testing.T) {
	cases := []struct {
		name  string
		fault dpatest.Fault
	}{
		{"answer times out", dpatest.Fault{OperationID: "startTransaction", Status: 0, Count: 1, Applied: true}},
		{"server error after opening", dpatest.Fault{OperationID: "startTransaction", Status: http.StatusBadGateway, Count: 1, Applied: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := startAPI(t, dpatest.Options{})
			ctx := ctxT(t)
			// Another API user's transaction stays untouched.
			other, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v2/services/haproxy/transactions?version=1", nil)
			if err != nil {
				t.Fatal(err)
			}
			other.SetBasicAuth(user, password)
			resp, err := http.DefaultClient.Do(other)
			if err != nil {
				t.Fatal(err)
			}
			var tx struct{ ID string }
			err = json.NewDecoder(resp.Body).Decode(&tx)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			srv.AddFault(tc.fault)
			if err := newDriver(t, srv, testProxy(t), dataplaneapi.WithRequestTimeout(300*time.Millisecond)).Setup(ctx); err != nil {
				t.Fatal(err)
			}
			if n := srv.OpenTransactions(); n != 1 {
				t.Fatalf("%d transactions open after set-up, want only the other user's", n)
			}
			if n := count(srv, "commitTransaction"); n != 1 {
				t.Fatalf("%d commits, want 1", n)
			}
			del, err := http.NewRequestWithContext(ctx, http.MethodDelete, srv.URL+"/v2/services/haproxy/transactions/"+tx.ID, nil)
			if err != nil {
				t.Fatal(err)
			}
			del.SetBasicAuth(user, password)
			if resp, err := http.DefaultClient.Do(del); err != nil {
				t.Fatal(err)
			} else {
				resp.Body.Close()
			}
			checkContract(t, srv)
		})
	}
}
