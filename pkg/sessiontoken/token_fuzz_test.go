package sessiontoken

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// FuzzVerify feeds any Sec-WebSocket-Protocol value through FromSubprotocols and Verify, as the
// edge reads a token from a browser: a token found is one whole entry of the header; a refusal
// is an *Error with one of the known reasons, on one line, never quoting the token; only a
// token signed with the key is accepted, and then only for its own session.
func FuzzVerify(f *testing.F) {
	key := Key{ID: "hs-1", Alg: HS256, Secret: []byte(strings.Repeat("fuzz-secret-", 4))}
	v := Verifier{Keys: []Key{key}, Audiences: []string{"pool:p1"}, Now: func() time.Time { return t0 }, Leeway: DefaultLeeway}
	good, err := Mint(key, NewClaims("s1", t0, time.Minute))
	if err != nil {
		f.Fatal(err)
	}
	for _, h := range []string{
		"x-nv-sessionid.s1, x-nv-token." + good, "x-nv-token." + good + "x", "x-nv-token.", "x-nv-token.a.b.c",
		"x-nv-token.eyJhbGciOiJub25lIn0.eyJzaWQiOiJzMSJ9.", "x-nv-token.a.b.c\r\nX-Session-Id: s2",
		"x-nv-token." + good + ",x-nv-token.x.y.z", "x-nv-token.\u00e9.\u00e9.\u00e9", "x-nv-token." + strings.Repeat("A", 5000) + ".b.c",
	} {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, header string) {
		token, found := FromSubprotocols(header)
		if found && (strings.ContainsAny(token, ", \t\r\n\v\f") || !strings.Contains(header, SubprotocolPrefix+token)) {
			t.Fatalf("FromSubprotocols(%q) = %q: not one whole entry", header, token)
		}
		c, err := v.Verify(token, "s1")
		if err == nil {
			if token != good || c.SessionID != "s1" {
				t.Fatalf("Verify accepted %q (claims %+v)", token, c)
			}
			if _, err := v.Verify(token, "s2"); ReasonOf(err) != WrongSession {
				t.Fatalf("token of s1 for s2: %v", err)
			}
			return
		}
		r := ReasonOf(err)
		msg := err.Error()
		switch {
		case !slices.Contains(Reasons, r):
			t.Fatalf("Verify(%q) = %v: not a known reason", token, err)
		case strings.ContainsAny(msg, "\r\n"):
			t.Fatalf("Verify(%q): error %q is not one line", token, msg)
		case len(token) >= 8 && strings.Contains(msg, token):
			t.Fatalf("Verify(%q): error %q quotes the token", token, msg)
		case (r == Missing) != (token == ""):
			t.Fatalf("Verify(%q) = %v", token, err)
		}
	})
}
