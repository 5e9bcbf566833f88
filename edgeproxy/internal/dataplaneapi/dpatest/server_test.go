package dpatest_test

import (
	"strings"
	"testing"

	"github.com/livegate/livegate/edgeproxy/internal/dataplaneapi/dpatest"
	"github.com/livegate/livegate/pkg/httpcall"
)

func do(t *testing.T, s *dpatest.Server, method, path, body, user, pass string) (int, string) {
	t.Helper()
	contentType := ""
	if body != "" {
		contentType = "application/json"
	}
	req := httpcall.New(t, method, s.URL+"/v2"+path, contentType, body)
	req.SetBasicAuth(user, pass)
	return httpcall.Do(t, nil, req)
}

// The fake must refuse what the real API refuses, or the driver's contract tests prove nothing.
func TestFakeEnforcesTheDocument(t *testing.T) {
	s := dpatest.Start(t, dpatest.Options{User: "u", Password: "p", Maps: dpatest.NewMemoryMaps("/m")})
	tests := []struct {
		name, method, path, body string
		pass                     string
		want                     int
		violation                bool
	}{
		{"wrong password", "GET", "/services/haproxy/configuration/version", "", "x", 401, false},
		{"version", "GET", "/services/haproxy/configuration/version", "", "p", 200, false},
		{"transaction needs a version", "POST", "/services/haproxy/transactions", "", "p", 400, true},
		{"stale version", "POST", "/services/haproxy/transactions?version=7", "", "p", 409, false},
		{"map entry without map", "POST", "/services/haproxy/runtime/maps_entries", `{"key":"a","value":"b"}`, "p", 400, true},
		{"map entry", "POST", "/services/haproxy/runtime/maps_entries?map=/m&force_sync=true", `{"key":"a","value":"b"}`, "p", 201, false},
		{"map entry again", "POST", "/services/haproxy/runtime/maps_entries?map=/m", `{"key":"a","value":"c"}`, "p", 409, false},
		{"replace needs value", "PUT", "/services/haproxy/runtime/maps_entries/a?map=/m", `{}`, "p", 400, true},
		{"force_sync is a boolean", "DELETE", "/services/haproxy/runtime/maps_entries/a?map=/m&force_sync=yes", "", "p", 400, true},
		{"unknown map", "GET", "/services/haproxy/runtime/maps_entries?map=/other", "", "p", 404, false},
		{"unknown bind field", "POST", "/services/haproxy/configuration/binds?frontend=f&version=1", `{"name":"b","address":"0.0.0.0","port":1,"colour":"red"}`, "p", 400, true},
		{"server port 0", "POST", "/services/haproxy/configuration/servers?backend=b&version=1", `{"name":"s","address":"0.0.0.0","port":0}`, "p", 400, true},
		{"bad rule type", "POST", "/services/haproxy/configuration/http_request_rules?parent_type=frontend&parent_name=f&version=1", `{"index":0,"type":"explode"}`, "p", 400, true},
		{"write without version or transaction", "POST", "/services/haproxy/configuration/backends", `{"name":"b"}`, "p", 400, false},
		{"write on a stale version", "POST", "/services/haproxy/configuration/backends?version=9", `{"name":"b"}`, "p", 409, false},
		{"bad reload id", "GET", "/services/haproxy/reloads/x", "", "p", 400, true},
		{"no such path", "GET", "/services/haproxy/nothing", "", "p", 404, true},
	}
	seen := 0
	for _, tt := range tests {
		got, body := do(t, s, tt.method, tt.path, tt.body, "u", tt.pass)
		if got != tt.want {
			t.Errorf("%s: status %d (%s), want %d", tt.name, got, body, tt.want)
		}
		if got >= 400 && !strings.Contains(body, `"message"`) {
			t.Errorf("%s: error without a message: %s", tt.name, body)
		}
		v := len(s.Violations())
		if (v > seen) != tt.violation {
			t.Errorf("%s: violation recorded %v, want %v", tt.name, v > seen, tt.violation)
		}
		seen = v
	}
}

func TestFakeTransactions(t *testing.T) {
	s := dpatest.Start(t, dpatest.Options{User: "u", Password: "p"})
	st, body := do(t, s, "POST", "/services/haproxy/transactions?version=1", "", "u", "p")
	if st != 201 {
		t.Fatalf("start: %d %s", st, body)
	}
	id := body[strings.Index(body, `"id":"`)+6:]
	id = id[:strings.IndexByte(id, '"')]
	if st, body := do(t, s, "POST", "/services/haproxy/configuration/backends?transaction_id="+id, `{"name":"b","mode":"http"}`, "u", "p"); st != 202 {
		t.Fatalf("create in transaction: %d %s", st, body)
	}
	if st, _ := do(t, s, "GET", "/services/haproxy/configuration/backends/b", "", "u", "p"); st != 404 {
		t.Fatalf("uncommitted backend visible: %d", st)
	}
	if st, _ := do(t, s, "GET", "/services/haproxy/configuration/backends/b?transaction_id="+id, "", "u", "p"); st != 200 {
		t.Fatalf("backend not visible in its transaction: %d", st)
	}
	s.BumpVersion()
	if st, _ := do(t, s, "PUT", "/services/haproxy/transactions/"+id, "", "u", "p"); st != 406 {
		t.Fatalf("outdated commit: %d, want 406", st)
	}
	if st, _ := do(t, s, "DELETE", "/services/haproxy/transactions/"+id, "", "u", "p"); st != 204 || s.OpenTransactions() != 0 {
		t.Fatalf("rollback: %d, %d open", st, s.OpenTransactions())
	}
	if v := s.Violations(); len(v) != 0 {
		t.Fatalf("violations: %v", v)
	}
}

func TestFakeEnforcesDependencies(t *testing.T) {
	s := dpatest.Start(t, dpatest.Options{User: "u", Password: "p"})
	if st, body := do(t, s, "POST", "/services/haproxy/configuration/frontends?version=1", `{"name":"f","mode":"http"}`, "u", "p"); st != 202 {
		t.Fatalf("create frontend: %d %s", st, body)
	}
	for _, tc := range []struct{ name, path, body string }{
		{"set-var without scope", "/services/haproxy/configuration/http_request_rules?parent_type=frontend&parent_name=f&version=2", `{"index":0,"type":"set-var","var_name":"x","var_expr":"src"}`},
		{"deny_status on set-dst", "/services/haproxy/configuration/http_request_rules?parent_type=frontend&parent_name=f&version=2", `{"index":0,"type":"set-dst","expr":"src","deny_status":403}`},
		{"cond_test without cond", "/services/haproxy/configuration/http_request_rules?parent_type=frontend&parent_name=f&version=2", `{"index":0,"type":"deny","cond_test":"{ src 10.0.0.1 }"}`},
		{"ciphers without ssl", "/services/haproxy/configuration/binds?frontend=f&version=2", `{"name":"b","address":"0.0.0.0","port":443,"ciphers":"HIGH"}`},
	} {
		before := len(s.Violations())
		if st, body := do(t, s, "POST", tc.path, tc.body, "u", "p"); st != 400 || len(s.Violations()) == before {
			t.Errorf("%s: status %d (%s), want 400 and a violation", tc.name, st, body)
		}
	}
	if st, body := do(t, s, "POST", "/services/haproxy/configuration/http_request_rules?parent_type=frontend&parent_name=f&version=2",
		`{"index":0,"type":"set-var","var_scope":"txn","var_name":"x","var_expr":"src","cond":"if","cond_test":"{ src 10.0.0.1 }"}`, "u", "p"); st != 202 {
		t.Fatalf("valid rule: %d %s", st, body)
	}
}
