package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
	"github.com/livegate/livegate/pkg/logbuf"
	"github.com/livegate/livegate/pkg/sessiontoken"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

// writeKey writes what an edge gets of k into dir: the public key or the secret.
func writeKey(t *testing.T, dir string, k sessiontoken.Key) {
	t.Helper()
	files, err := k.Files()
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if filepath.Ext(name) != sessiontoken.PrivateExt {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func newKey(t *testing.T, gen func(string) (sessiontoken.Key, error), kid string) sessiontoken.Key {
	t.Helper()
	k, err := gen(kid)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestTokenFlags(t *testing.T) {
	keys := t.TempDir()
	writeKey(t, keys, newKey(t, sessiontoken.NewES256, "es-1"))
	writeKey(t, keys, newKey(t, sessiontoken.NewHS256, "hs-1"))
	withPrivate := t.TempDir()
	k := newKey(t, sessiontoken.NewES256, "es-1")
	files, _ := k.Files()
	if err := os.WriteFile(filepath.Join(withPrivate, "es-1.key"), files["es-1.key"], 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"mode", []string{"--session-token", "sometimes"}, `flag --session-token: value "sometimes": want off, optional or required`},
		{"no keys", []string{"--session-token", "required"}, `--session-token-keys (default): value "": --session-token=required needs`},
		{"relative", []string{"--session-token", "optional", "--session-token-keys", "keys"}, `flag --session-token-keys: value "keys"`},
		{"missing dir", []string{"--session-token", "optional", "--session-token-keys", "/nonexistent"}, `flag --session-token-keys: session token keys: open /nonexistent`},
		{"private key", []string{"--session-token", "required", "--session-token-keys", withPrivate}, `flag --session-token-keys: key file ` + withPrivate + `/es-1.key: a private key does not belong`},
		{"leeway", []string{"--session-token", "required", "--session-token-keys", keys, "--session-token-leeway", "1500ms"}, `flag --session-token-leeway: value 1.5s: want whole seconds`},
		{"driver", []string{"--session-token", "required", "--session-token-keys", keys, "--driver", "other"}, `flag --session-token: required: only with --driver runtime`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, f := newFlagSet("run", io.Discard, nil)
			if err := f.parse(fs, tc.args); err != nil {
				t.Fatal(err)
			}
			_, err := f.haproxyConfig()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("haproxyConfig: %v, want %q", err, tc.want)
			}
		})
	}
	fs, f := newFlagSet("run", io.Discard, nil)
	if err := f.parse(fs, []string{"--session-token", "required", "--session-token-keys", keys, "--pool", "p1", "--edge-id", "e1"}); err != nil {
		t.Fatal(err)
	}
	c, err := f.haproxyConfig()
	if err != nil {
		t.Fatal(err)
	}
	tk := c.Tokens
	if len(tk.Keys) != 2 || tk.Keys[0].File != filepath.Join(keys, "es-1.pem") || tk.Keys[1].Secret == "" || fmt.Sprint(tk.Audiences) != "[pool:p1 edge:e1]" || tk.Leeway != 30*time.Second {
		t.Fatalf("tokens: %d keys, audiences %v, leeway %s (secrets not shown)", len(tk.Keys), tk.Audiences, tk.Leeway)
	}
}

func TestTokenCounter(t *testing.T) {
	c := newTokenCounter(nil)
	value := func(r string) float64 { return testutil.ToFloat64(c.vec.WithLabelValues(r)) }
	for i, step := range []struct {
		restart bool
		counts  map[string]uint64
		valid   float64
		expired float64
	}{
		{false, map[string]uint64{"valid": 3}, 3, 0},
		{false, map[string]uint64{"valid": 5, "expired": 1}, 5, 1},
		{true, map[string]uint64{"valid": 7}, 12, 1},                // a reload the edge made: all 7 are new
		{false, map[string]uint64{"valid": 2, "expired": 1}, 14, 2}, // a reload behind the edge's back
	} {
		if step.restart {
			c.Restarted()
		}
		c.add(step.counts)
		if value("valid") != step.valid || value("expired") != step.expired {
			t.Fatalf("step %d: valid %v expired %v, want %v %v", i, value("valid"), value("expired"), step.valid, step.expired)
		}
	}
}

func TestTokenCommand(t *testing.T) {
	dir := t.TempDir()
	run := func(stdin string, args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := TokenCommand(strings.NewReader(stdin))(context.Background(), args, &out, &errOut)
		return code, out.String(), errOut.String()
	}
	if code, out, errOut := run("", "keygen", "--kid", "k1", "--out", dir); code != 0 || !strings.Contains(out, "k1.key") || !strings.Contains(out, "k1.pem") {
		t.Fatalf("keygen: %d %q %q", code, out, errOut)
	}
	if code, _, errOut := run("", "keygen", "--kid", "k1", "--out", dir); code != 1 || !strings.Contains(errOut, "exists") {
		t.Fatalf("keygen over an existing key: %d %q", code, errOut)
	}
	if code, _, _ := run("", "keygen", "--alg", "HS256", "--kid", "h1", "--out", dir); code != 0 {
		t.Fatal("keygen HS256")
	}
	edge := t.TempDir()
	for _, name := range []string{"k1.pem", "h1.hs256"} {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		if err := os.WriteFile(filepath.Join(edge, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, key := range []string{"k1.key", "h1.hs256"} {
		code, token, errOut := run("", "mint", "--key", filepath.Join(dir, key), "--session", "s1", "--audience", "pool:p1", "--subprotocol")
		if code != 0 || !strings.HasPrefix(token, sessiontoken.SubprotocolPrefix) {
			t.Fatalf("mint with %s: %d %q %q", key, code, token, errOut)
		}
		if code, out, errOut := run(token, "verify", "--keys", edge, "--session", "s1", "--audience", "pool:p1"); code != 0 || !strings.HasPrefix(out, "valid: session s1, audience pool:p1") {
			t.Fatalf("verify from stdin: %d %q %q", code, out, errOut)
		}
		if code, _, errOut := run("", "verify", "--keys", edge, "--session", "s2", "--audience", "pool:p1", strings.TrimSpace(token)); code != 1 || !strings.Contains(errOut, "wrong_session") {
			t.Fatalf("verify for another session: %d %q", code, errOut)
		}
	}
	for _, args := range [][]string{{}, {"sign"}, {"mint", "--session", "s1"}, {"keygen", "--alg", "RS256", "--kid", "x"}, {"verify", "--keys", edge}} {
		if code, _, _ := run("", args...); code != 2 {
			t.Errorf("token %q: exit %d, want 2", args, code)
		}
	}
	// A refused flag or argument is one line, as in every command, with a pointer to -h.
	for want, args := range map[string][]string{
		"livegate-edgeproxy token mint: flag --ttl: value \"soon\": want a duration such as 30s, 1m30s or 500ms\n(`livegate-edgeproxy token mint -h` lists the flags)\n": {"mint", "--ttl", "soon"},
		"livegate-edgeproxy token verify: command line: unexpected argument \"b\"\n":                                                                                     {"verify", "a", "b"},
		"livegate-edgeproxy token mint: --key and --session are required\n":                                                                                              {"mint", "--session", "s1"},
		"livegate-edgeproxy token verify: --keys and --session are required\n":                                                                                           {"verify", "--keys", "k"},
	} {
		if code, _, errOut := run("", args...); code != 2 || !strings.HasPrefix(errOut, want) {
			t.Errorf("token %q: exit %d, stderr %q; want 2 and %q", args, code, errOut, want)
		}
	}
}

// TestSessionTokensInRun runs the edge with --session-token=required and embedded NATS: a
// tokenless handshake is refused, a valid one routed; adding a key and retiring the old one in
// --session-token-keys reloads HAProxy while a websocket opened with the old key stays open; the
// checks and reloads are counted on /metrics.
func TestSessionTokensInRun(t *testing.T) {
	keys := filepath.Join(haproxytest.Dir(t), "keys")
	if err := os.Mkdir(keys, 0o700); err != nil {
		t.Fatal(err)
	}
	old, next := newKey(t, sessiontoken.NewES256, "old"), newKey(t, sessiontoken.NewHS256, "next")
	writeKey(t, keys, old)
	e := startInProcessEdge(t, "tok", "--hard-stop-after", "1m", "--session-token", "required", "--session-token-keys", keys)
	e.putPoolRoute(t, "i-tok", "s1", haproxytest.StartBackend(t, "app", false))
	dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer dcancel()
	open := func(k *sessiontoken.Key) (*websocket.Conn, haproxytest.Result, error) {
		protos := []string{"x-nv-sessionid.s1"}
		if k != nil {
			token, err := sessiontoken.Mint(*k, sessiontoken.Claims{SessionID: "s1", NotBefore: time.Now(), Expiry: time.Now().Add(time.Minute), Audience: "pool:default"})
			if err != nil {
				t.Fatal(err)
			}
			protos = append(protos, sessiontoken.Subprotocol(token))
		}
		return haproxytest.Open(dctx, e.sigPort, "/", protos, nil)
	}
	accepted := func(k *sessiontoken.Key) bool {
		c, _, err := open(k)
		if err == nil {
			c.CloseNow()
		}
		return err == nil
	}
	waitFor(t, "route with a valid token", func() bool { return accepted(&old) })
	if _, res, err := open(nil); err == nil || res.Status != http.StatusUnauthorized {
		t.Fatalf("tokenless handshake: %+v, %v; want 401", res, err)
	}
	held, _, err := open(&old)
	if err != nil {
		t.Fatal(err)
	}
	defer held.CloseNow()
	writeKey(t, keys, next)
	waitFor(t, "the new key accepted", func() bool { return accepted(&next) })
	if err := os.Remove(filepath.Join(keys, "old.pem")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the old key retired", func() bool { return !accepted(&old) })
	if err := held.Write(dctx, websocket.MessageText, []byte("still here")); err != nil {
		t.Fatalf("websocket opened before the rotation: %v", err)
	}
	if _, msg, err := held.Read(dctx); err != nil || string(msg) != "still here" {
		t.Fatalf("websocket opened before the rotation: %q, %v", msg, err)
	}
	// The watcher counts a reload once the new worker answers, just after it serves.
	var body string
	waitFor(t, "the second reload counted", func() bool {
		_, body = get(e.admin + "/metrics")
		return strings.Contains(body, `livegate_edge_session_token_reloads_total{result="ok"} 2`)
	})
	for _, want := range []string{`livegate_edge_session_token_keys 1`, `livegate_edge_session_tokens_total{result="unknown_key"}`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !strings.Contains(body, `livegate_edge_session_tokens_total{result="valid"}`) || strings.Contains(body, `livegate_edge_session_tokens_total{result="missing"} 0`) {
		t.Errorf("/metrics token counts: %s", grepLines(body, "session_tokens_total"))
	}
	if strings.Contains(e.logs.String(), string(next.Secret)) {
		t.Error("the HS256 secret is in the edge's log")
	}
}

func grepLines(s, sub string) string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestKeyWatcherKeepsKeysOnABadDirectory: a key directory that does not load changes nothing
// (no reload is tried) and is logged once, however often it is looked at.
func TestKeyWatcherKeepsKeysOnABadDirectory(t *testing.T) {
	keys := t.TempDir()
	k := newKey(t, sessiontoken.NewES256, "k1")
	writeKey(t, keys, k)
	fs, f := newFlagSet("run", io.Discard, nil)
	if err := f.parse(fs, []string{"--session-token", "required", "--session-token-keys", keys, "--state-dir", t.TempDir(), "--tls-self-signed", "--media=off", "--edge-id", "e1", "--public-host", "edge.example.test"}); err != nil {
		t.Fatal(err)
	}
	s, err := f.settings(nil)
	if err != nil {
		t.Fatal(err)
	}
	var logs logbuf.Buffer
	reg := prometheus.NewRegistry()
	w := newKeyWatcher(s, nil, func(context.Context) { t.Error("counts polled for a reload") }, reg, zerolog.New(&logs))
	files, _ := k.Files()
	if err := os.WriteFile(filepath.Join(keys, "k1.key"), files["k1.key"], 0o600); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		w.check(context.Background())
	}
	if n := strings.Count(logs.String(), "session token keys not loaded"); n != 1 {
		t.Fatalf("logged %d times, want once: %s", n, logs.String())
	}
	if v := testutil.ToFloat64(w.reloads.WithLabelValues("error")) + testutil.ToFloat64(w.reloads.WithLabelValues("ok")); v != 0 {
		t.Fatalf("%v reloads counted", v)
	}
	if strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Fatal("the private key is in the log")
	}
}
