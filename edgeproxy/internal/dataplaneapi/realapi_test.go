package dataplaneapi_test

// Tests of what the real Data Plane API (v2.9) does that a simpler fake would not: a large map
// payload replaces the map, a 401 echoes the password, HAProxy being unreachable is answered with
// the statuses of a missing entry or a bad request, and zero-valued fields are omitted.

import (
	"bytes"
	"context"
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

func routes(prefix string, n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("%s%05d", prefix, i)] = fmt.Sprintf("10.%d.%d.%d:%d", i>>16&255, i>>8&255, i&255, 30000+i%2000)
	}
	return m
}

func showMap(t *testing.T, maps *dpatest.MemoryMaps) map[string]string {
	t.Helper()
	entries, err := maps.Show(context.Background(), mapName)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range entries {
		if _, dup := m[e.Key]; dup {
			t.Fatalf("map holds %s twice", e.Key)
		}
		m[e.Key] = e.Value
	}
	return m
}

// The edge restarted with 1,200 new routes beside 401 programmed ones: the new ones are added,
// and the 401 stay (a payload over 8 KiB would have replaced the map).
func TestLargeSetKeepsTheRoutesTheMapHolds(t *testing.T) {
	maps := dpatest.NewMemoryMaps(mapName)
	ctx := ctxT(t)
	old := routes("old", 401)
	for k, v := range old {
		_ = maps.Add(ctx, mapName, k, v)
	}
	srv := startAPI(t, dpatest.Options{Maps: maps})
	d := newDriver(t, srv, nil)
	add := routes("new", 1200)
	if err := d.Apply(ctx, add, nil); err != nil {
		t.Fatal(err)
	}
	want := routes("new", 1200)
	for k, v := range old {
		want[k] = v
	}
	if got := showMap(t, maps); !reflect.DeepEqual(got, want) {
		t.Fatalf("map holds %d entries, want %d", len(got), len(want))
	}
	if got, err := d.List(ctx); err != nil || len(got) != len(want) {
		t.Fatalf("List: %d entries, %v", len(got), err)
	}
	checkContract(t, srv)
}

// On an empty map the whole set goes in one payload, large enough to be a replace: still right.
func TestLargeSetOnAnEmptyMapIsOnePayload(t *testing.T) {
	maps := dpatest.NewMemoryMaps(mapName)
	srv := startAPI(t, dpatest.Options{Maps: maps})
	ctx := ctxT(t)
	want := routes("s", 1200)
	if err := newDriver(t, srv, nil).Apply(ctx, want, nil); err != nil {
		t.Fatal(err)
	}
	if got := showMap(t, maps); !reflect.DeepEqual(got, want) {
		t.Fatalf("map holds %d entries, want %d", len(got), len(want))
	}
	if n, m := count(srv, "addPayloadRuntimeMap"), count(srv, "addMapEntry"); n != 1 || m != 0 {
		t.Fatalf("%d payloads and %d single adds, want 1 and 0", n, m)
	}
	if n := maps.Syncs(mapName); n != 1 {
		t.Fatalf("%d force_syncs, want 1", n)
	}
	checkContract(t, srv)
}

// A success answered over a map that does not hold what was set is not reported as a success.
func TestLargeSetIsCheckedAgainstTheMap(t *testing.T) {
	maps := dpatest.NewMemoryMaps(mapName)
	srv := startAPI(t, dpatest.Options{Maps: maps})
	ctx := ctxT(t)
	// Someone adds k00000 between the driver's read and its payload, which adds it a second time
	// (a small payload is an add): HAProxy matches the first entry, not the driver's.
	srv.OnRequest(func(op string) {
		if op == "addPayloadRuntimeMap" {
			_ = maps.Add(ctx, mapName, "k00000", "10.9.9.9:1")
		}
	})
	set := routes("k", 300) // a payload under 8 KiB
	d := newDriver(t, srv, nil)
	err := d.Apply(ctx, set, nil)
	if err == nil || !strings.Contains(err.Error(), "k00000") {
		t.Fatalf("Apply = %v, want the disagreement on k00000 reported", err)
	}
	srv.OnRequest(nil)
	// The next pass repairs it.
	got, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(ctx, map[string]string{"k00000": set["k00000"]}, nil); err != nil {
		t.Fatal(err)
	}
	if got, err = d.List(ctx); err != nil || !reflect.DeepEqual(got, set) {
		t.Fatalf("after repair List = %v, %v", got, err)
	}
	checkContract(t, srv)
}

func TestUnauthorizedNeverShowsThePassword(t *testing.T) {
	srv := startAPI(t, dpatest.Options{Password: "other"})
	var logs bytes.Buffer
	d := newDriver(t, srv, testProxy(t), dataplaneapi.WithLogger(zerolog.New(&logs)))
	for _, call := range []func() error{
		func() error { return d.Setup(ctxT(t)) },
		func() error {
			return newDriver(t, srv, nil).Apply(ctxT(t), map[string]string{"a": "10.0.0.1:1"}, []string{"b"})
		},
		func() error { _, err := newDriver(t, srv, nil).List(ctxT(t)); return err },
	} {
		err := call()
		if statusOf(err) != http.StatusUnauthorized {
			t.Fatalf("err = %v, want 401", err)
		}
		if strings.Contains(err.Error(), password) || !strings.Contains(err.Error(), "401 unauthorized (check --dataplaneapi-user") {
			t.Fatalf("err = %q", err)
		}
	}
	if strings.Contains(logs.String(), password) {
		t.Fatalf("logs show the password: %s", logs.String())
	}
}

func TestServerMessagesHaveThePasswordMasked(t *testing.T) {
	srv := startAPI(t, dpatest.Options{})
	srv.AddFault(dpatest.Fault{OperationID: "addMapEntry", Status: http.StatusBadRequest, Count: 1, Message: "cannot use " + password})
	err := newDriver(t, srv, nil).Apply(ctxT(t), map[string]string{"a": "10.0.0.1:1"}, nil)
	if err == nil || strings.Contains(err.Error(), password) || !strings.Contains(err.Error(), "cannot use xxxxx") {
		t.Fatalf("err = %v", err)
	}
}

// Correcting the password file is picked up at the next 401, without a restart.
func TestPasswordFileIsReadAgainOnUnauthorized(t *testing.T) {
	srv := startAPI(t, dpatest.Options{})
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("wrong\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	var f dataplaneapi.Flags
	f.Register(fs)
	if err := fs.Parse([]string{"--dataplaneapi-url", srv.URL, "--dataplaneapi-user", user, "--dataplaneapi-password-file", pw}); err != nil {
		t.Fatal(err)
	}
	d, err := f.Driver(testConfig(), zerolog.Nop(), fastOpts()...)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	if err := d.Apply(ctx, map[string]string{"a": "10.0.0.1:1"}, nil); statusOf(err) != http.StatusUnauthorized {
		t.Fatalf("err = %v, want 401", err)
	}
	if err := os.WriteFile(pw, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(ctx, map[string]string{"a": "10.0.0.1:1"}, nil); err != nil {
		t.Fatal(err)
	}
	// A rotation: the server first, then the file.
	srv.SetPassword("rotated")
	if err := os.WriteFile(pw, []byte("rotated\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.List(ctx); err != nil {
		t.Fatal(err)
	}
	checkContract(t, srv)
}

func unreachable(err error) bool {
	var ae *dataplaneapi.APIError
	return errors.As(err, &ae) && ae.HAProxyUnreachable()
}

// While HAProxy is down the API answers a delete 404 and an add 400: neither is final, and the
// delete is not done until the map confirms it.
func TestHAProxyDownIsNeitherDoneNorFinal(t *testing.T) {
	maps := dpatest.NewMemoryMaps(mapName)
	ctx := ctxT(t)
	_ = maps.Add(ctx, mapName, "gone", "10.0.0.1:1")
	_ = maps.Add(ctx, mapName, "kept", "10.0.0.1:2")
	srv := startAPI(t, dpatest.Options{Maps: maps})
	d := newDriver(t, srv, nil)
	maps.SetDown(true)
	err := d.Apply(ctx, nil, []string{"gone"})
	if !unreachable(err) || statusOf(err) != http.StatusNotFound || !strings.Contains(err.Error(), "haproxy unreachable") {
		t.Fatalf("delete while down: %v, want an error saying haproxy is unreachable", err)
	}
	err = d.Apply(ctx, map[string]string{"new": "10.0.0.1:3", "new2": "10.0.0.1:4"}, nil)
	if !unreachable(err) || statusOf(err) != http.StatusBadRequest {
		t.Fatalf("add while down: %v", err)
	}
	if n := count(srv, "addMapEntry"); n != 4 {
		t.Fatalf("add tried %d times, want 4 (retried as a transient failure, then the batch stops)", n)
	}
	if _, err := d.List(ctx); !unreachable(err) {
		t.Fatalf("List while down: %v", err)
	}
	maps.SetDown(false)
	if err := d.Apply(ctx, map[string]string{"new": "10.0.0.1:3", "new2": "10.0.0.1:4"}, []string{"gone"}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"kept": "10.0.0.1:2", "new": "10.0.0.1:3", "new2": "10.0.0.1:4"}
	if got := showMap(t, maps); !reflect.DeepEqual(got, want) {
		t.Fatalf("map = %v", got)
	}
	checkContract(t, srv)
}

// A 404 to a delete is done only when the map no longer holds the key.
func TestDeleteAnswered404IsConfirmed(t *testing.T) {
	maps := dpatest.NewMemoryMaps(mapName)
	ctx := ctxT(t)
	_ = maps.Add(ctx, mapName, "a", "10.0.0.1:1")
	srv := startAPI(t, dpatest.Options{Maps: maps})
	d := newDriver(t, srv, nil)
	if err := d.Apply(ctx, nil, []string{"missing"}); err != nil {
		t.Fatalf("delete of a missing key: %v", err)
	}
	srv.AddFault(dpatest.Fault{OperationID: "deleteRuntimeMapEntry", Status: http.StatusNotFound, Count: 1, Message: "runtime: not found"})
	err := d.Apply(ctx, nil, []string{"a"})
	if err == nil || !strings.Contains(err.Error(), "still holds") {
		t.Fatalf("err = %v, want the delete reported not done", err)
	}
	if err := d.Apply(ctx, nil, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	if got := showMap(t, maps); len(got) != 0 {
		t.Fatalf("map = %v", got)
	}
	checkContract(t, srv)
}

// A batch writes the map file once, with its last call.
func TestOneForceSyncPerBatch(t *testing.T) {
	maps, dir := fileMaps(t, routes("old", 5))
	ctx := ctxT(t)
	srv := startAPI(t, dpatest.Options{Maps: maps})
	d := newDriver(t, srv, nil)
	set := routes("new", 10)
	if err := d.Apply(ctx, set, []string{"old00000", "old00001"}); err != nil {
		t.Fatal(err)
	}
	if n := maps.Syncs(mapName); n != 1 {
		t.Fatalf("%d force_syncs for one batch, want 1", n)
	}
	want := showMap(t, maps)
	if file := readMapFile(t, filepath.Join(dir, mapName+".map")); !reflect.DeepEqual(file, want) {
		t.Fatalf("map file %v, map %v", file, want)
	}
	// The last call fails: the changes before it are written to the file by one more call.
	adds := 0
	srv.OnRequest(func(op string) {
		if op == "addMapEntry" {
			if adds++; adds == 3 {
				srv.AddFault(dpatest.Fault{OperationID: "addMapEntry", Status: http.StatusBadRequest, Count: 1, Message: "refused"})
			}
		}
	})
	if err := d.Apply(ctx, map[string]string{"x1": "10.0.0.1:1", "x2": "10.0.0.1:2", "x3": "10.0.0.1:3"}, nil); err == nil {
		t.Fatal("Apply succeeded")
	}
	srv.OnRequest(nil)
	if n := maps.Syncs(mapName); n != 2 {
		t.Fatalf("%d force_syncs, want 2", n)
	}
	if file := readMapFile(t, filepath.Join(dir, mapName+".map")); file["x2"] != "10.0.0.1:2" || len(file) != len(want)+2 {
		t.Fatalf("map file after a failed last call: %v", file)
	}
	// Nothing owed: a read writes nothing.
	if _, err := d.List(ctx); err != nil || maps.Syncs(mapName) != 2 {
		t.Fatalf("List: %v, %d force_syncs, want 2", err, maps.Syncs(mapName))
	}
	checkContract(t, srv)
}

// A force_sync owed when the API could not be reached is made by the next read of the map.
func TestOwedForceSyncIsMadeByList(t *testing.T) {
	maps, dir := fileMaps(t, nil)
	srv := startAPI(t, dpatest.Options{Maps: maps})
	d := newDriver(t, srv, nil)
	ctx := ctxT(t)
	// HAProxy stops after the first of two adds: the second, which carries force_sync, fails.
	adds := 0
	srv.OnRequest(func(op string) {
		if op == "addMapEntry" {
			if adds++; adds == 2 {
				maps.SetDown(true)
			}
		}
	})
	if err := d.Apply(ctx, map[string]string{"a": "10.0.0.1:1", "b": "10.0.0.1:2"}, nil); !unreachable(err) {
		t.Fatalf("Apply = %v, want haproxy unreachable", err)
	}
	srv.OnRequest(nil)
	maps.SetDown(false)
	if n := maps.Syncs(mapName); n != 0 {
		t.Fatalf("%d force_syncs, want 0", n)
	}
	got, err := d.List(ctx)
	if err != nil || got["a"] != "10.0.0.1:1" {
		t.Fatalf("List = %v, %v", got, err)
	}
	if file := readMapFile(t, filepath.Join(dir, mapName+".map")); file["a"] != "10.0.0.1:1" {
		t.Fatalf("map file after List: %v", file)
	}
	checkContract(t, srv)
}

// fileMaps is a map holding entries whose force_sync writes its file in a directory of the test.
func fileMaps(t *testing.T, entries map[string]string) (*dpatest.MemoryMaps, string) {
	maps := dpatest.NewMemoryMaps(mapName)
	dir := t.TempDir()
	maps.WriteFiles(dir)
	for k, v := range entries {
		_ = maps.Add(context.Background(), mapName, k, v)
	}
	return maps, dir
}

func readMapFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			m[k] = v
		}
	}
	return m
}

// The real server omits sc_id when it is 0, and other zero-valued fields: a configuration that
// matches is left alone, so an edge's start neither commits a transaction nor reloads HAProxy.
func TestSetupIgnoresOmittedDefaults(t *testing.T) {
	srv := startAPI(t, dpatest.Options{})
	ctx := ctxT(t)
	if err := newDriver(t, srv, testProxy(t)).Setup(ctx); err != nil {
		t.Fatal(err)
	}
	text, err := srv.Render()
	if err != nil || !strings.Contains(text, "sc-inc-gpc0(0)") {
		t.Fatalf("configuration lacks sc-inc-gpc0(0): %v\n%s", err, text)
	}
	for range 3 {
		if err := newDriver(t, srv, testProxy(t)).Setup(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n, m := count(srv, "startTransaction"), count(srv, "commitTransaction"); n != 1 || m != 1 {
		t.Fatalf("%d transactions and %d commits (reloads) over four starts, want 1 and 1", n, m)
	}
	checkContract(t, srv)
}

// The fake's runtime-socket store answers as the real server does when HAProxy's socket is gone.
func TestRuntimeSocketGoneIsUnreachable(t *testing.T) {
	store := dpatest.RuntimeMaps{Client: haproxy.NewClient(filepath.Join(t.TempDir(), "gone.sock"), time.Second), MapsDir: t.TempDir()}
	srv := startAPI(t, dpatest.Options{Maps: store})
	d := newDriver(t, srv, nil)
	ctx := ctxT(t)
	if err := d.Apply(ctx, nil, []string{"a"}); !unreachable(err) || statusOf(err) != http.StatusNotFound {
		t.Fatalf("delete: %v", err)
	}
	if err := d.Apply(ctx, map[string]string{"a": "10.0.0.1:1"}, nil); !unreachable(err) || statusOf(err) != http.StatusBadRequest {
		t.Fatalf("add: %v", err)
	}
	checkContract(t, srv)
}

// An owed force_sync on a map that is now empty is made by clearing it.
func TestOwedForceSyncOnAnEmptyMap(t *testing.T) {
	maps, dir := fileMaps(t, map[string]string{"a": "10.0.0.1:1", "b": "10.0.0.1:2"})
	ctx := ctxT(t)
	_ = maps.Sync(ctx, mapName)
	srv := startAPI(t, dpatest.Options{Maps: maps})
	d := newDriver(t, srv, nil)
	dels := 0
	srv.OnRequest(func(op string) {
		if op == "deleteRuntimeMapEntry" {
			if dels++; dels == 2 {
				maps.SetDown(true)
			}
		}
	})
	if err := d.Apply(ctx, nil, []string{"a", "b"}); !unreachable(err) {
		t.Fatalf("Apply = %v, want haproxy unreachable", err)
	}
	srv.OnRequest(nil)
	maps.SetDown(false)
	_ = maps.Del(ctx, mapName, "b")
	if got, err := d.List(ctx); err != nil || len(got) != 0 {
		t.Fatalf("List = %v, %v", got, err)
	}
	if file := readMapFile(t, filepath.Join(dir, mapName+".map")); len(file) != 0 {
		t.Fatalf("map file after List: %v", file)
	}
	if n := count(srv, "clearRuntimeMap"); n != 1 {
		t.Fatalf("%d clears, want 1", n)
	}
	checkContract(t, srv)
}
