package routes

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

func testPolicy() Policy {
	return Policy{
		BackendCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")},
		BackendPorts: portalloc.Range{First: 30000, Last: 32767},
	}
}

func encode(t *testing.T, r *livegatev1.Route) []byte {
	t.Helper()
	b, err := wire.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParse(t *testing.T) {
	ok := func() *livegatev1.Route {
		return &livegatev1.Route{SessionId: "s-1", InstanceId: "inst-1", SignalingBackend: "10.1.2.3:30000", MediaBackends: []string{"10.1.2.3:31000"}, EdgeId: "edge-a"}
	}
	tests := []struct {
		name    string
		key     string
		mutate  func(*livegatev1.Route)
		raw     []byte
		wantErr string
	}{
		{name: "valid", key: "inst-1", mutate: func(*livegatev1.Route) {}},
		{name: "valid pool route, IPv6 media", key: "inst-1", mutate: func(r *livegatev1.Route) {
			r.EdgeId, r.Pool, r.MediaBackends = "", "pool-a", []string{"[fd00::1]:32767"}
		}},
		{name: "not protojson", key: "inst-1", raw: []byte("{nope"), wantErr: "value"},
		{name: "key with a dot", key: "inst.1", mutate: func(*livegatev1.Route) {}, wantErr: "key (instance id)"},
		{name: "instance id differs from key", key: "inst-2", mutate: func(*livegatev1.Route) {}, wantErr: "instance_id"},
		{name: "empty session", key: "inst-1", mutate: func(r *livegatev1.Route) { r.SessionId = "" }, wantErr: "session_id"},
		{name: "session with newline", key: "inst-1", mutate: func(r *livegatev1.Route) { r.SessionId = "a\nshow info" }, wantErr: "session_id"},
		{name: "session with semicolon", key: "inst-1", mutate: func(r *livegatev1.Route) { r.SessionId = "a;b" }, wantErr: "session_id"},
		{name: "session too long", key: "inst-1", mutate: func(r *livegatev1.Route) { r.SessionId = strings.Repeat("a", 129) }, wantErr: "session_id"},
		{name: "no edge, no pool", key: "inst-1", mutate: func(r *livegatev1.Route) { r.EdgeId = "" }, wantErr: "edge_id and pool"},
		{name: "bad edge id", key: "inst-1", mutate: func(r *livegatev1.Route) { r.EdgeId = "a.b" }, wantErr: "edge_id"},
		{name: "bad pool", key: "inst-1", mutate: func(r *livegatev1.Route) { r.Pool = "p*" }, wantErr: "pool"},
		{name: "backend not ip:port", key: "inst-1", mutate: func(r *livegatev1.Route) { r.SignalingBackend = "app.local:30000" }, wantErr: "signaling_backend"},
		{name: "backend with trailing words", key: "inst-1", mutate: func(r *livegatev1.Route) { r.SignalingBackend = "10.0.0.1:30000 x" }, wantErr: "signaling_backend"},
		{name: "backend outside CIDRs", key: "inst-1", mutate: func(r *livegatev1.Route) { r.SignalingBackend = "192.168.1.1:30000" }, wantErr: "outside the allowed backend CIDRs"},
		{name: "backend port outside range", key: "inst-1", mutate: func(r *livegatev1.Route) { r.SignalingBackend = "10.0.0.1:22" }, wantErr: "outside the allowed range"},
		{name: "zoned backend", key: "inst-1", mutate: func(r *livegatev1.Route) { r.SignalingBackend = "[fd00::1%eth0]:30000" }, wantErr: "zoned"},
		{name: "bad media backend", key: "inst-1", mutate: func(r *livegatev1.Route) { r.MediaBackends = append(r.MediaBackends, "10.0.0.1:80") }, wantErr: "media_backends[1]"},
		{name: "as many media backends as the cap", key: "inst-1", mutate: func(r *livegatev1.Route) {
			r.MediaBackends = []string{"10.1.2.3:31000", "10.1.2.3:31001", "10.1.2.3:31002", "10.1.2.3:31003"}
		}},
		{name: "more media backends than the cap", key: "inst-1", mutate: func(r *livegatev1.Route) {
			r.MediaBackends = []string{"10.1.2.3:31000", "10.1.2.3:31001", "10.1.2.3:31002", "10.1.2.3:31003", "10.1.2.3:31004"}
		}, wantErr: "media_backends: 5 backends, more than the 4"},
		{name: "duplicate media backend", key: "inst-1", mutate: func(r *livegatev1.Route) {
			r.MediaBackends = []string{"10.1.2.3:31000", "10.1.2.3:31001", "10.1.2.3:31000"}
		}, wantErr: "media_backends[2]: 10.1.2.3:31000 repeats media_backends[0]"},
		{name: "duplicate media backend, mapped spelling", key: "inst-1", mutate: func(r *livegatev1.Route) {
			r.MediaBackends = []string{"10.1.2.3:31000", "[::ffff:10.1.2.3]:31000"}
		}, wantErr: "repeats media_backends[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := tt.raw
			if raw == nil {
				r := ok()
				tt.mutate(r)
				raw = encode(t, r)
			}
			got, err := testPolicy().Parse(tt.key, raw, 7)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if got.Key != tt.key || got.Revision != 7 || !got.Signaling.IsValid() {
					t.Fatalf("Parse = %+v", got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Parse error %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestParsePrefixes(t *testing.T) {
	if p, err := ParsePrefixes("10.0.0.0/8, 10.1.2.3/16"); err != nil || len(p) != 2 || p[1].String() != "10.1.0.0/16" {
		t.Errorf("ParsePrefixes = %v, %v", p, err)
	}
	for _, s := range []string{"", "10.0.0.0", "x/8"} {
		if _, err := ParsePrefixes(s); err == nil {
			t.Errorf("ParsePrefixes(%q) accepted", s)
		}
	}
}

func rt(key, session, edge, pool string, rev uint64) Route {
	return Route{Key: key, SessionID: session, Signaling: netip.MustParseAddrPort("10.0.0.1:30000"), EdgeID: edge, Pool: pool, Revision: rev}
}

func TestDerive(t *testing.T) {
	self := Self{EdgeID: "me", Pool: "p"}
	tests := []struct {
		name        string
		routes      []Route
		endpoints   map[string]Endpoint
		live        []string
		wantServe   []string
		wantClaims  map[string]uint64
		wantRefused []string
		owners      map[string]string
	}{
		{name: "direct route to me", routes: []Route{rt("a", "s", "me", "", 1)}, wantServe: []string{"a"}},
		{name: "direct route to another edge", routes: []Route{rt("a", "s", "other", "p", 1)}},
		{name: "pool route without endpoint is claimable", routes: []Route{rt("a", "s", "", "p", 1)}, wantClaims: map[string]uint64{"a": 0}},
		{name: "other pool", routes: []Route{rt("a", "s", "", "q", 1)}},
		{
			name: "pool route with my endpoint is served", routes: []Route{rt("a", "s", "", "p", 1)},
			endpoints: map[string]Endpoint{"a": {EdgeID: "me", Revision: 4}}, wantServe: []string{"a"},
		},
		{
			name: "pool route held by a live edge", routes: []Route{rt("a", "s", "", "p", 1)},
			endpoints: map[string]Endpoint{"a": {EdgeID: "other", Revision: 4}}, live: []string{"other"},
		},
		{
			name: "pool route held by a dead edge is claimable at its revision", routes: []Route{rt("a", "s", "", "p", 1)},
			endpoints: map[string]Endpoint{"a": {EdgeID: "other", Revision: 4}}, wantClaims: map[string]uint64{"a": 4},
		},
		{
			name: "duplicate session id: older revision wins", routes: []Route{rt("new", "s", "me", "", 9), rt("old", "s", "me", "", 2)},
			wantServe: []string{"old"}, wantRefused: []string{"new"},
		},
		{
			name: "duplicate session id: its holder keeps it though its revision is newer", routes: []Route{rt("owner", "s", "me", "", 9), rt("squatter", "s", "me", "", 2)},
			owners: map[string]string{"s": "owner"}, wantServe: []string{"owner"}, wantRefused: []string{"squatter"},
		},
		{
			name: "duplicate session id: refused while its holder's route is away", routes: []Route{rt("squatter", "s", "me", "", 2)},
			owners: map[string]string{"s": "owner"}, wantRefused: []string{"squatter"},
		},
		{
			name: "duplicate session id between a claim and a served route", routes: []Route{rt("a", "s", "me", "", 1), rt("b", "s", "", "p", 5)},
			wantServe: []string{"a"}, wantRefused: []string{"b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := map[string]Route{}
			for _, r := range tt.routes {
				rs[r.Key] = r
			}
			live := map[string]bool{}
			for _, e := range tt.live {
				live[e] = true
			}
			p := Derive(self, rs, func(k string) (Endpoint, bool) {
				ep, ok := tt.endpoints[k]
				return ep, ok
			}, live, tt.owners)
			if got := slices.Sorted(maps.Keys(p.Serve)); !slices.Equal(got, tt.wantServe) {
				t.Errorf("serve %v, want %v", got, tt.wantServe)
			}
			claims := map[string]uint64{}
			for _, c := range p.Claims {
				claims[c.Route.Key] = c.Revision
			}
			if !maps.Equal(claims, tt.wantClaims) {
				t.Errorf("claims %v, want %v", claims, tt.wantClaims)
			}
			if got := slices.Sorted(maps.Keys(p.Refused)); !slices.Equal(got, tt.wantRefused) {
				t.Errorf("refused %v, want %v", got, tt.wantRefused)
			}
		})
	}
}

func TestDiff(t *testing.T) {
	tests := []struct {
		name      string
		want      map[string]string
		have      map[string]string
		wantSet   map[string]string
		wantDeled []string
	}{
		{"empty", nil, nil, map[string]string{}, nil},
		{"add", map[string]string{"a": "1"}, nil, map[string]string{"a": "1"}, nil},
		{"delete", nil, map[string]string{"a": "1", "b": "2"}, map[string]string{}, []string{"a", "b"}},
		{"replace", map[string]string{"a": "2"}, map[string]string{"a": "1"}, map[string]string{"a": "2"}, nil},
		{"in line", map[string]string{"a": "1"}, map[string]string{"a": "1"}, map[string]string{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set, del := Diff(tt.want, tt.have)
			if !maps.Equal(set, tt.wantSet) || !slices.Equal(del, tt.wantDeled) {
				t.Fatalf("Diff = %v %v, want %v %v", set, del, tt.wantSet, tt.wantDeled)
			}
		})
	}
}

func TestClaimDelay(t *testing.T) {
	step, maxDelay := 5*time.Millisecond, time.Second
	tests := []struct {
		load int
		want time.Duration
	}{
		{0, 0}, {-1, 0}, {1, 5 * time.Millisecond}, {100, 500 * time.Millisecond}, {200, time.Second}, {1 << 40, time.Second},
	}
	for _, tt := range tests {
		if got := ClaimDelay(tt.load, step, maxDelay); got != tt.want {
			t.Errorf("ClaimDelay(%d) = %v, want %v", tt.load, got, tt.want)
		}
	}
	if ClaimDelay(10, 0, maxDelay) != 0 {
		t.Error("zero step must mean no delay")
	}
}

func TestClaimOrderDiffersByEdge(t *testing.T) {
	keys := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	one, two := slices.Clone(keys), slices.Clone(keys)
	ClaimOrder("edge-1", one)
	ClaimOrder("edge-2", two)
	if slices.Equal(one, two) {
		t.Fatalf("both edges claim in the order %v", one)
	}
	again := slices.Clone(keys)
	ClaimOrder("edge-1", again)
	if !slices.Equal(one, again) {
		t.Fatal("ClaimOrder is not deterministic")
	}
}

func TestScheduler(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	delay := func(_ string, i int) time.Duration { return time.Duration(i) * time.Second }
	s := NewScheduler()

	due, next := s.Update(t0, []string{"a", "b", "c"}, delay)
	if !slices.Equal(due, []string{"a"}) || !next.Equal(t0.Add(time.Second)) || s.Pending() != 2 {
		t.Fatalf("first: due %v next %v pending %d", due, next, s.Pending())
	}
	// b is no longer claimable (another edge took it); c falls due at t0+2s.
	due, next = s.Update(t0.Add(1500*time.Millisecond), []string{"c"}, delay)
	if len(due) != 0 || !next.Equal(t0.Add(2*time.Second)) || s.Pending() != 1 {
		t.Fatalf("second: due %v next %v pending %d", due, next, s.Pending())
	}
	due, next = s.Update(t0.Add(2*time.Second), []string{"c", "d"}, delay)
	if !slices.Equal(due, []string{"c", "d"}) || !next.IsZero() || s.Pending() != 0 {
		t.Fatalf("third: due %v next %v pending %d", due, next, s.Pending())
	}
}
