package dataplaneapi_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/dataplaneapi"
	"github.com/livegate/livegate/edgeproxy/internal/dataplaneapi/dpatest"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/drivertest"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
	"github.com/livegate/livegate/pkg/freeport"
)

// realEdge is a real HAProxy behind the fake Data Plane API: the API's reload starts HAProxy with
// the configuration the driver's transaction built, and its map entry calls are runtime API
// commands on that HAProxy, as the real Data Plane API's are.
type realEdge struct {
	haproxytest.Files
	Port int
	Srv  *dpatest.Server
	// started receives the HAProxy the first reload started.
	started chan *haproxytest.Instance
}

// newRealAPI starts the fake Data Plane API whose first reload starts HAProxy with the operator's
// global and defaults sections plus what the transaction built; the map file exists and is empty.
func newRealAPI(t *testing.T) *realEdge {
	t.Helper()
	haproxytest.Binary(t)
	f := haproxytest.NewFiles(t, haproxytest.Dir(t))
	e := &realEdge{Files: f, Port: freeport.TCP(t), started: make(chan *haproxytest.Instance, 1)}
	full, err := haproxy.Render(f.ConfigFor(e.Port))
	if err != nil {
		t.Fatal(err)
	}
	// The global and defaults sections are the operator's part of the configuration.
	i := strings.Index(full, "\nfrontend ")
	if i < 0 {
		t.Fatal("rendered configuration has no frontend")
	}
	operator := full[:i+1]
	if err := haproxy.WriteMapFile(f.MapFile, nil); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	onReload := func(sections string) error {
		if err := os.WriteFile(f.Config, []byte(operator+"\n"+sections), 0o644); err != nil {
			return err
		}
		var inst *haproxytest.Instance
		once.Do(func() { inst = haproxytest.Supervise(t, f, e.Port) })
		if inst == nil {
			return errors.New("this test expects one reload")
		}
		if err := inst.Ready(); err != nil {
			return err
		}
		e.started <- inst
		return nil
	}
	e.Srv = startAPI(t, dpatest.Options{Maps: dpatest.RuntimeMaps{Client: haproxy.NewClient(f.Socket, 5*time.Second), MapsDir: f.Dir}, OnReload: onReload})
	t.Cleanup(func() { checkContract(t, e.Srv) })
	return e
}

// TestDataplaneAPIDriverContract runs the drivers' contract on the Data Plane API driver, which sets up the
// frontend and backend in one transaction and keeps the map file itself (force_sync). A replace
// or a delete takes one HTTP call per entry, so the bulk case is smaller than the runtime
// driver's.
func TestDataplaneAPIDriverContract(t *testing.T) {
	drivertest.Run(t, drivertest.Harness{Bulk: 600, Start: func(t *testing.T, missLimit int) drivertest.Edge {
		e := newRealAPI(t)
		cfg := e.ConfigFor(e.Port)
		cfg.MissLimit = missLimit
		proxy, err := dataplaneapi.LivegateProxy(cfg)
		if err != nil {
			t.Fatal(err)
		}
		d, err := dataplaneapi.New(dataplaneapi.Config{URL: e.Srv.URL, User: user, Password: password, Map: dataplaneapi.MapName(e.MapFile), Proxy: &proxy}, fastOpts()...)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := d.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if n := count(e.Srv, "startTransaction"); n != 1 {
				t.Errorf("%d transactions, want 1", n)
			}
		})
		return drivertest.Edge{HAProxy: <-e.started, Driver: d}
	}})
}
