package dataplaneapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/dataplaneapi"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
)

// recorder stands in for a Data Plane API server and keeps every request it gets: the fuzz
// targets check what reaches it, not what it answers.
type recorder struct {
	mu   sync.Mutex
	reqs []recorded
	// conflict makes every add answer 409, so the driver goes on to the replace call whose path
	// holds the key.
	conflict bool
}

type recorded struct {
	method, path, rawPath, query string
	body                         []byte
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	r.reqs = append(r.reqs, recorded{req.Method, req.URL.Path, req.URL.EscapedPath(), req.URL.RawQuery, body})
	conflict := r.conflict
	r.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case req.Method == http.MethodPost && conflict:
		w.WriteHeader(http.StatusConflict)
		_, _ = io.WriteString(w, `{"code":409,"message":"exists"}`)
	case req.Method == http.MethodGet:
		_, _ = io.WriteString(w, `[]`)
	case req.Method == http.MethodDelete:
		w.WriteHeader(http.StatusNoContent)
	default:
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{}`)
	}
}

func (r *recorder) take() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.reqs
	r.reqs = nil
	return out
}

const entriesPrefix = "/v2/services/haproxy/runtime/maps_entries"

// FuzzDPAEntry drives Apply with one route (set or delete) of any key and value. A route the
// driver refuses must not reach the server at all, and its error must name the route and what is
// wrong. An accepted one must reach the server with the key as exactly one clean path segment
// (no dot-segment, nothing escaped) or as the JSON body, and the value as a parsed ip:port.
func FuzzDPAEntry(f *testing.F) {
	for _, s := range [][2]string{
		{"s-1", "10.0.0.1:30000"}, {"s-1", "[fd00::1]:30000"}, {"..", "10.0.0.1:30000"}, {".", "10.0.0.1:30000"},
		{"a/b", "10.0.0.1:30000"}, {"a%2fb", "10.0.0.1:30000"}, {"a?x=1", "10.0.0.1:30000"}, {"a#b", "10.0.0.1:30000"},
		{"s", "10.0.0.1:30000\nx"}, {"s", "10.0.0.1"}, {"s", "$(id):1"}, {"s", "[fe80::1%eth0]:30000"}, {"s\n", "1.2.3.4:5"},
	} {
		f.Add(s[0], s[1], false)
		f.Add(s[0], s[1], true)
	}
	rec := &recorder{}
	srv := httptest.NewServer(rec)
	f.Cleanup(srv.Close)
	d, err := dataplaneapi.New(dataplaneapi.Config{URL: srv.URL, User: "u", Password: "p", Map: "livegate-sessions"},
		dataplaneapi.WithRetry(1, time.Millisecond), dataplaneapi.WithRequestTimeout(5*time.Second))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, key, value string, del bool) {
		rec.mu.Lock()
		rec.conflict = !del
		rec.mu.Unlock()
		rec.take()
		set, dels := haproxytest.Change(key, value, del)
		err := d.Apply(context.Background(), set, dels)
		reqs := rec.take()
		if err != nil {
			if len(reqs) != 0 {
				t.Fatalf("Apply(%q, %q) refused (%v) but sent %d requests", key, value, err, len(reqs))
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "set route ") && !strings.HasPrefix(msg, "delete route ") {
				t.Fatalf("refusal %q does not name the route", msg)
			}
			return
		}
		if len(reqs) == 0 {
			t.Fatalf("Apply(%q, %q) accepted but sent nothing", key, value)
		}
		if !del {
			if _, perr := netip.ParseAddrPort(value); perr != nil {
				t.Fatalf("Apply accepted backend %q: %v", value, perr)
			}
		}
		for _, r := range reqs {
			if r.path != r.rawPath || path.Clean(r.path) != r.path {
				t.Fatalf("key %q: request path %q (raw %q) is escaped or not clean", key, r.path, r.rawPath)
			}
			if !strings.HasPrefix(r.path, entriesPrefix) {
				t.Fatalf("key %q: request to %q, outside the map entries", key, r.path)
			}
			if rest := strings.TrimPrefix(r.path, entriesPrefix); rest != "" && rest != "/"+key {
				t.Fatalf("key %q: request path %q does not end in the key", key, r.path)
			}
			if len(r.body) > 0 {
				var e struct{ Key, Value string }
				if json.Unmarshal(r.body, &e) != nil || (e.Key != "" && e.Key != key) || (e.Value != "" && e.Value != value) {
					t.Fatalf("key %q value %q: body %q", key, value, r.body)
				}
			}
		}
	})
}
