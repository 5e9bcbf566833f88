package haproxy_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/livegate/livegate/edgeproxy/internal/atomicfile"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
	"github.com/livegate/livegate/pkg/freeport"
	"github.com/livegate/livegate/pkg/sessiontoken"
)

// tokenKeys generates signing keys and returns them with the frontend's verification keys:
// ES256 public keys written to dir, HS256 secrets inline.
func tokenKeys(t *testing.T, dir string, ids ...string) ([]sessiontoken.Key, []haproxy.TokenKey) {
	t.Helper()
	var signers []sessiontoken.Key
	var verifiers []haproxy.TokenKey
	for _, id := range ids {
		gen := sessiontoken.NewES256
		if strings.HasPrefix(id, "hs") {
			gen = sessiontoken.NewHS256
		}
		k, err := gen(id)
		if err != nil {
			t.Fatal(err)
		}
		signers = append(signers, k)
		tk := haproxy.TokenKey{ID: id, Alg: k.Alg, Secret: string(k.Secret)}
		if k.Alg == sessiontoken.ES256 {
			files, err := k.Files()
			if err != nil {
				t.Fatal(err)
			}
			tk.File = filepath.Join(dir, id+sessiontoken.PublicExt)
			if err := os.WriteFile(tk.File, files[id+sessiontoken.PublicExt], 0o644); err != nil {
				t.Fatal(err)
			}
		}
		verifiers = append(verifiers, tk)
	}
	return signers, verifiers
}

func tokenConfig(f haproxytest.Files, port int, mode string, keys []haproxy.TokenKey) haproxy.Config {
	c := f.ConfigFor(port)
	c.Tokens = haproxy.SessionTokens{Mode: mode, Keys: keys, Audiences: []string{"pool:p1", "edge:e1"}, Leeway: sessiontoken.DefaultLeeway}
	return c
}

func mintToken(t *testing.T, k sessiontoken.Key, c sessiontoken.Claims) string {
	t.Helper()
	s, err := sessiontoken.Mint(k, c)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// upgrade sends a websocket handshake for session s1 with the Sec-WebSocket-Protocol value
// protocols and returns the status and body.
func upgrade(t *testing.T, port int, protocols string) (string, string) {
	t.Helper()
	req := "GET /sign_in HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: " + protocols + "\r\n\r\n"
	status, _, body := rawRequest(t, port, req)
	return status, body
}

func TestSessionTokenRefusals(t *testing.T) {
	f := haproxytest.NewFiles(t, haproxytest.Dir(t))
	signers, keys := tokenKeys(t, f.Dir, "es-1", "hs-1")
	es, hs := signers[0], signers[1]
	// A secret with every character besides letters and digits an HS256 secret may hold.
	odd := sessiontoken.Key{ID: "hs-2", Alg: sessiontoken.HS256, Secret: []byte("+/=-_.~" + strings.Repeat("s", 30))}
	signers = append(signers, odd)
	keys = append(keys, haproxy.TokenKey{ID: odd.ID, Alg: odd.Alg, Secret: string(odd.Secret)})
	h := haproxytest.Start(t, tokenConfig(f, freeport.TCP(t), haproxy.TokensRequired, keys), f)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	app := haproxytest.StartBackend(t, "app", false)
	if err := h.Driver.Apply(ctx, map[string]string{"s1": app.Addr.String(), "s2": app.Addr.String()}, nil); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	good := sessiontoken.NewClaims("s1", now.Add(-time.Minute), 5*time.Minute)
	with := func(f func(*sessiontoken.Claims)) sessiontoken.Claims { c := good; f(&c); return c }
	stranger, err := sessiontoken.NewES256("es-1")
	if err != nil {
		t.Fatal(err)
	}
	other, err := sessiontoken.NewES256("es-9")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, token string
		want        sessiontoken.Reason
	}{
		{"missing", "", sessiontoken.Missing},
		{"malformed", "not-a-jwt", sessiontoken.Malformed},
		{"malformed json", "eyJ.eyJ.eyJ", sessiontoken.Malformed},
		{"unknown key", mintToken(t, other, good), sessiontoken.UnknownKey},
		{"wrongly signed es256", mintToken(t, stranger, good), sessiontoken.BadSignature},
		{"wrongly signed hs256", mintToken(t, sessiontoken.Key{ID: "hs-1", Alg: sessiontoken.HS256, Secret: []byte(strings.Repeat("x", 43))}, good), sessiontoken.BadSignature},
		{"expired", mintToken(t, es, with(func(c *sessiontoken.Claims) { c.NotBefore, c.Expiry = now.Add(-time.Hour), now.Add(-time.Minute) })), sessiontoken.Expired},
		{"not yet valid", mintToken(t, hs, with(func(c *sessiontoken.Claims) { c.NotBefore, c.Expiry = now.Add(time.Minute), now.Add(time.Hour) })), sessiontoken.NotYetValid},
		{"other pool", mintToken(t, es, with(func(c *sessiontoken.Claims) { c.Audience = "pool:p2" })), sessiontoken.WrongAudience},
		{"other session", mintToken(t, hs, with(func(c *sessiontoken.Claims) { c.SessionID = "s2" })), sessiontoken.WrongSession},
	} {
		t.Run(tc.name, func(t *testing.T) {
			protocols := "x-nv-sessionid.s1"
			if tc.token != "" {
				protocols += ", " + sessiontoken.Subprotocol(tc.token)
			}
			status, body := upgrade(t, h.Port, protocols)
			want := fmt.Sprintf("%d %s", tc.want.Status(), http.StatusText(tc.want.Status()))
			if status != want || body != "session token refused: "+string(tc.want) {
				t.Fatalf("got %s %q, want %s %q", status, body, want, "session token refused: "+string(tc.want))
			}
			// The Go verifier agrees with the frontend.
			v := sessiontoken.Verifier{Keys: signers, Audiences: []string{"pool:p1", "edge:e1"}, Leeway: sessiontoken.DefaultLeeway}
			if _, err := v.Verify(tc.token, "s1"); sessiontoken.ReasonOf(err) != tc.want {
				t.Fatalf("sessiontoken.Verify: %v, want %s", err, tc.want)
			}
		})
	}
	// Refused before routing: a session that does not exist gets the same 401, not a 404.
	if status, _ := upgrade(t, h.Port, "x-nv-sessionid.nosuch"); !strings.HasPrefix(status, "401") {
		t.Errorf("unknown session without token: %s, want 401", status)
	}
	for _, c := range []sessiontoken.Claims{good, with(func(c *sessiontoken.Claims) { c.Audience = "edge:e1" })} {
		for _, k := range signers {
			res, err := haproxytest.DialWith(ctx, h.Port, "/x", []string{"x-nv-sessionid.s1", sessiontoken.Subprotocol(mintToken(t, k, c))}, nil)
			if err != nil || res.Message != "app /x" || res.Subprotocol != "x-nv-sessionid.s1" {
				t.Fatalf("valid %s token (aud %q): %+v, %v", k.Alg, c.Audience, res, err)
			}
		}
	}
	counts, err := haproxy.NewClient(f.Socket, 5*time.Second).TokenCounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"valid": 6, "missing": 2, "malformed": 2, "unknown_key": 1, "bad_signature": 2, "expired": 1, "not_yet_valid": 1, "wrong_audience": 1, "wrong_session": 1}
	if fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Errorf("token counts %v, want %v", counts, want)
	}
}

func TestSessionTokenOptional(t *testing.T) {
	f := haproxytest.NewFiles(t, haproxytest.Dir(t))
	signers, keys := tokenKeys(t, f.Dir, "es-1")
	h := haproxytest.Start(t, tokenConfig(f, freeport.TCP(t), haproxy.TokensOptional, keys), f)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	app := haproxytest.StartBackend(t, "app", false)
	if err := h.Driver.Apply(ctx, map[string]string{"s1": app.Addr.String()}, nil); err != nil {
		t.Fatal(err)
	}
	if res, err := haproxytest.Dial(ctx, h.Port, "/", "s1"); err != nil || res.Message != "app /" {
		t.Fatalf("tokenless client in optional mode: %+v, %v", res, err)
	}
	token := mintToken(t, signers[0], sessiontoken.NewClaims("s1", time.Now(), time.Minute))
	if res, err := haproxytest.DialWith(ctx, h.Port, "/", []string{"x-nv-sessionid.s1", sessiontoken.Subprotocol(token)}, nil); err != nil || res.Message != "app /" {
		t.Fatalf("valid token in optional mode: %+v, %v", res, err)
	}
	// A token that is there must be good.
	if status, body := upgrade(t, h.Port, "x-nv-sessionid.s1, x-nv-token.garbage"); !strings.HasPrefix(status, "401") || body != "session token refused: malformed" {
		t.Fatalf("malformed token in optional mode: %s %q", status, body)
	}
	counts, err := haproxy.NewClient(f.Socket, 5*time.Second).TokenCounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(counts) != fmt.Sprint(map[string]uint64{"tokenless": 1, "valid": 1, "malformed": 1}) {
		t.Errorf("token counts %v", counts)
	}
}

// TestSessionTokenRotation adds a key, then retires the old one, reloading HAProxy each time,
// while a websocket opened with the old key stays open and working.
func TestSessionTokenRotation(t *testing.T) {
	f := haproxytest.NewFiles(t, haproxytest.Dir(t))
	signers, keys := tokenKeys(t, f.Dir, "old", "new")
	port := freeport.TCP(t)
	h := haproxytest.Start(t, tokenConfig(f, port, haproxy.TokensRequired, keys[:1]), f)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	app := haproxytest.StartBackend(t, "app", false)
	routes := map[string]string{"s1": app.Addr.String()}
	if err := h.Driver.Apply(ctx, routes, nil); err != nil {
		t.Fatal(err)
	}
	// A reloaded worker starts from the map file; the edge's resync puts the routes back.
	h.OnReady(func() { _ = h.Driver.Apply(context.Background(), routes, nil) })
	dial := func(k sessiontoken.Key) (*websocket.Conn, error) {
		token := mintToken(t, k, sessiontoken.NewClaims("s1", time.Now(), 5*time.Minute))
		c, _, err := haproxytest.Open(ctx, port, "/held", []string{"x-nv-sessionid.s1", sessiontoken.Subprotocol(token)}, nil)
		return c, err
	}
	held, err := dial(signers[0])
	if err != nil {
		t.Fatal(err)
	}
	defer held.CloseNow()
	if _, err := dial(signers[1]); err == nil {
		t.Fatal("token of the new key accepted before the key was added")
	}
	reload := func(keys []haproxy.TokenKey) {
		t.Helper()
		text, err := haproxy.Render(tokenConfig(f, port, haproxy.TokensRequired, keys))
		if err != nil {
			t.Fatal(err)
		}
		if err := atomicfile.Write(f.Config, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := h.Supervisor.Reload(ctx); err != nil {
			t.Fatal(err)
		}
	}
	echo := func(msg string) {
		t.Helper()
		if err := held.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatalf("held websocket: %v", err)
		}
		if _, got, err := held.Read(ctx); err != nil || string(got) != msg {
			t.Fatalf("held websocket: read %q, %v", got, err)
		}
	}
	reload(keys)
	echo("after the new key was added")
	for _, k := range signers {
		c, err := dial(k)
		if err != nil {
			t.Fatalf("key %s while both are published: %v", k.ID, err)
		}
		c.CloseNow()
	}
	reload(keys[1:])
	echo("after the old key was retired")
	if _, err := dial(signers[0]); err == nil {
		t.Fatal("token of the retired key accepted")
	}
	c, err := dial(signers[1])
	if err != nil {
		t.Fatalf("new key after the old one was retired: %v", err)
	}
	c.CloseNow()
	// A configuration HAProxy refuses is not loaded: the running worker keeps serving.
	if err := os.WriteFile(f.Config, []byte("frontend broken\n    bind :notaport\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := h.Supervisor.Reload(ctx); err == nil || !strings.Contains(err.Error(), "configuration refused") {
		t.Fatalf("reload of a broken configuration: %v", err)
	}
	echo("after a refused reload")
}

func TestParseTokenTable(t *testing.T) {
	out := "# table: livegate_session_tokens, type: string, size:64, used:2\n" +
		"0x55f1c2b0a3d0: key=valid use=0 exp=0 http_req_cnt=4\n0x55f1c2b0a4e0: key=expired use=0 exp=0 http_req_cnt=1\n\n"
	got, err := haproxy.ParseTokenTable(out)
	if err != nil || fmt.Sprint(got) != "map[expired:1 valid:4]" {
		t.Fatalf("ParseTokenTable = %v, %v", got, err)
	}
	if _, err := haproxy.ParseTokenTable("Unknown command\n"); err == nil {
		t.Fatal("an error answer parsed as counts")
	}
}

func TestSessionTokensValidate(t *testing.T) {
	base := haproxytest.Files{Socket: "/s", MapFile: "/m", Cert: "/c"}.ConfigFor(1)
	for name, tc := range map[string]struct {
		tokens haproxy.SessionTokens
		want   string
	}{
		"mode":           {haproxy.SessionTokens{Mode: "maybe"}, "want off, optional or required"},
		"no key":         {haproxy.SessionTokens{Mode: "required"}, "no verification key"},
		"bad kid":        {haproxy.SessionTokens{Mode: "required", Keys: []haproxy.TokenKey{{ID: "a b", Alg: "ES256", File: "/k"}}}, "key id"},
		"twice":          {haproxy.SessionTokens{Mode: "required", Keys: []haproxy.TokenKey{{ID: "a", Alg: "ES256", File: "/k"}, {ID: "a", Alg: "ES256", File: "/j"}}}, "used twice"},
		"file quote":     {haproxy.SessionTokens{Mode: "required", Keys: []haproxy.TokenKey{{ID: "a", Alg: "ES256", File: `/k"`}}}, "forbidden character"},
		"secret":         {haproxy.SessionTokens{Mode: "required", Keys: []haproxy.TokenKey{{ID: "a", Alg: "HS256", Secret: strings.Repeat("x", 40) + `"`}}}, "secret refused"},
		"secret newline": {haproxy.SessionTokens{Mode: "required", Keys: []haproxy.TokenKey{{ID: "a", Alg: "HS256", Secret: strings.Repeat("x", 40) + "\n"}}}, "secret refused"},
		"alg":            {haproxy.SessionTokens{Mode: "required", Keys: []haproxy.TokenKey{{ID: "a", Alg: "RS256", File: "/k"}}}, "want an ES256 key"},
		"audience":       {haproxy.SessionTokens{Mode: "optional", Keys: []haproxy.TokenKey{{ID: "a", Alg: "ES256", File: "/k"}}, Audiences: []string{"p1"}}, "audience"},
		"leeway":         {haproxy.SessionTokens{Mode: "optional", Keys: []haproxy.TokenKey{{ID: "a", Alg: "ES256", File: "/k"}}, Leeway: 1500 * time.Millisecond}, "whole seconds"},
	} {
		c := base
		c.Tokens = tc.tokens
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v, want %q", name, err, tc.want)
		}
		if strings.Contains(fmt.Sprint(c.Validate()), strings.Repeat("x", 40)) {
			t.Errorf("%s: the error quotes the secret", name)
		}
	}
}
