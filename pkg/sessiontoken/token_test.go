package sessiontoken

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func mustKey(t *testing.T, gen func(string) (Key, error), kid string) Key {
	t.Helper()
	k, err := gen(kid)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mint(t *testing.T, k Key, c Claims) string {
	t.Helper()
	s, err := Mint(k, c)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// publicOnly is k as an edge holds it.
func publicOnly(k Key) Key {
	k.Private = nil
	return k
}

func TestVerify(t *testing.T) {
	es := mustKey(t, NewES256, "es-1")
	hs := mustKey(t, NewHS256, "hs-1")
	other := mustKey(t, NewES256, "es-1")
	otherHS := mustKey(t, NewHS256, "hs-1")
	esAsHS := Key{ID: "es-1", Alg: HS256, Secret: []byte(strings.Repeat("k", 40))}
	v := Verifier{Keys: []Key{publicOnly(es), hs}, Audiences: []string{"pool:p1", "edge:e1"}, Now: func() time.Time { return t0 }, Leeway: DefaultLeeway}
	good := NewClaims("s1", t0.Add(-time.Minute), 5*time.Minute)
	with := func(f func(*Claims)) Claims { c := good; f(&c); return c }
	unsigned := func(header, body string) string {
		e := base64.RawURLEncoding.EncodeToString
		return e([]byte(header)) + "." + e([]byte(body)) + "." + e([]byte("sig"))
	}
	for _, tc := range []struct {
		name  string
		token string
		sid   string
		want  Reason
	}{
		{"es256", mint(t, es, good), "s1", ""},
		{"hs256", mint(t, hs, good), "s1", ""},
		{"pool audience", mint(t, es, with(func(c *Claims) { c.Audience = "pool:p1" })), "s1", ""},
		{"edge audience", mint(t, hs, with(func(c *Claims) { c.Audience = "edge:e1" })), "s1", ""},
		{"exp within leeway", mint(t, es, with(func(c *Claims) { c.Expiry = t0.Add(-29 * time.Second) })), "s1", ""},
		{"nbf within leeway", mint(t, es, with(func(c *Claims) { c.NotBefore = t0.Add(30 * time.Second) })), "s1", ""},
		{"missing", "", "s1", Missing},
		{"not a jwt", "garbage", "s1", Malformed},
		{"two parts", "a.b", "s1", Malformed},
		{"padding", mint(t, es, good) + "=", "s1", Malformed},
		{"header not json", "eyJ.eyJ.eyJ", "s1", Malformed},
		{"no kid", unsigned(`{"alg":"HS256"}`, `{"sid":"s1","exp":1,"nbf":1}`), "s1", Malformed},
		{"no sid", unsigned(`{"alg":"HS256","kid":"hs-1"}`, `{"exp":1,"nbf":1}`), "s1", Malformed},
		{"no exp", unsigned(`{"alg":"HS256","kid":"hs-1"}`, `{"sid":"s1","nbf":1}`), "s1", Malformed},
		{"no nbf", unsigned(`{"alg":"HS256","kid":"hs-1"}`, `{"sid":"s1","exp":1}`), "s1", Malformed},
		{"sid a number", unsigned(`{"alg":"HS256","kid":"hs-1"}`, `{"sid":1,"exp":1,"nbf":1}`), "s1", Malformed},
		{"alg none", unsigned(`{"alg":"none","kid":"hs-1"}`, `{"sid":"s1","exp":1,"nbf":1}`), "s1", BadSignature},
		{"unknown kid", mint(t, mustKey(t, NewES256, "es-2"), good), "s1", UnknownKey},
		{"es256 other key", mint(t, other, good), "s1", BadSignature},
		{"hs256 other secret", mint(t, otherHS, good), "s1", BadSignature},
		{"alg swapped for the kid", mint(t, esAsHS, good), "s1", BadSignature},
		{"tampered claims", tamper(t, mint(t, es, good)), "s1", BadSignature},
		{"expired", mint(t, es, with(func(c *Claims) { c.Expiry = t0.Add(-30 * time.Second) })), "s1", Expired},
		{"not yet valid", mint(t, hs, with(func(c *Claims) { c.NotBefore = t0.Add(31 * time.Second) })), "s1", NotYetValid},
		{"other pool", mint(t, es, with(func(c *Claims) { c.Audience = "pool:p2" })), "s1", WrongAudience},
		{"other edge", mint(t, es, with(func(c *Claims) { c.Audience = "edge:e2" })), "s1", WrongAudience},
		{"audience list", unsignedHS(t, hs, `{"sid":"s1","aud":["pool:p1"],"exp":`+unix(t0.Add(time.Minute))+`,"nbf":`+unix(t0)+`}`), "s1", WrongAudience},
		{"other session", mint(t, es, good), "s2", WrongSession},
		{"expired and other session", mint(t, es, with(func(c *Claims) { c.Expiry = t0.Add(-time.Hour); c.NotBefore = t0.Add(-2 * time.Hour) })), "s2", Expired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := v.Verify(tc.token, tc.sid)
			if got := ReasonOf(err); got != tc.want || (err != nil) != (tc.want != "") {
				t.Fatalf("Verify = %v (reason %q), want reason %q", err, got, tc.want)
			}
			if err == nil && c.SessionID != tc.sid {
				t.Fatalf("claims %+v: want session %s", c, tc.sid)
			}
			if err != nil && len(tc.token) > 8 && strings.Contains(err.Error(), tc.token) {
				t.Fatalf("error %q quotes the token", err)
			}
		})
	}
}

func unix(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }

// unsignedHS signs a raw payload with k, for claims Mint would not write.
func unsignedHS(t *testing.T, k Key, body string) string {
	t.Helper()
	e := base64.RawURLEncoding.EncodeToString
	signing := e([]byte(`{"alg":"HS256","kid":"`+k.ID+`","typ":"JWT"}`)) + "." + e([]byte(body))
	m := hmac.New(sha256.New, k.Secret)
	m.Write([]byte(signing))
	return signing + "." + e(m.Sum(nil))
}

// tamper changes the sid claim of a token and keeps its signature.
func tamper(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	body, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(body), `"sid":"s1"`, `"sid":"s2"`, 1)))
	return strings.Join(parts, ".")
}

func TestMintRefuses(t *testing.T) {
	es := mustKey(t, NewES256, "k")
	good := NewClaims("s1", t0, time.Minute)
	for name, tc := range map[string]struct {
		k Key
		c Claims
	}{
		"bad session id":      {es, NewClaims("a b", t0, time.Minute)},
		"bad audience":        {es, Claims{SessionID: "s1", NotBefore: t0, Expiry: t0.Add(time.Minute), Audience: "p1"}},
		"empty audience name": {es, Claims{SessionID: "s1", NotBefore: t0, Expiry: t0.Add(time.Minute), Audience: "pool:"}},
		"exp before nbf":      {es, NewClaims("s1", t0, -time.Minute)},
		"public key only":     {publicOnly(es), good},
		"bad kid":             {Key{ID: "a.b", Alg: HS256, Secret: []byte(strings.Repeat("k", 40))}, good},
	} {
		if _, err := Mint(tc.k, tc.c); err == nil || !strings.HasPrefix(err.Error(), "mint session token: ") {
			t.Errorf("%s: Mint error %v, want a mint session token error", name, err)
		}
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	es := mustKey(t, NewES256, "es-1")
	hs := mustKey(t, NewHS256, "hs-1")
	for _, k := range []Key{es, hs} {
		files, err := k.Files()
		if err != nil {
			t.Fatal(err)
		}
		for name, b := range files {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	signer, err := LoadKey(filepath.Join(dir, "es-1.key"))
	if err != nil || !signer.CanSign() || !signer.Private.Equal(es.Private) {
		t.Fatalf("LoadKey(es-1.key) = %+v, %v", signer, err)
	}
	// The verification directory refuses the private key next to the public one.
	if _, err := LoadVerificationKeys(dir); err == nil || !strings.Contains(err.Error(), "private key does not belong") {
		t.Fatalf("LoadVerificationKeys with a private key: %v", err)
	}
	if err := os.Remove(filepath.Join(dir, "es-1.key")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "..data"), 0o700); err != nil {
		t.Fatal(err)
	}
	keys, err := LoadVerificationKeys(dir)
	if err != nil || len(keys) != 2 || keys[0].ID != "es-1" || keys[0].CanSign() || keys[1].ID != "hs-1" || string(keys[1].Secret) != string(hs.Secret) {
		t.Fatalf("LoadVerificationKeys = %+v, %v", keys, err)
	}
	token := mint(t, es, NewClaims("s1", t0, time.Minute))
	if _, err := (Verifier{Keys: keys, Now: func() time.Time { return t0 }}).Verify(token, "s1"); err != nil {
		t.Fatalf("token of the written key: %v", err)
	}
}

func TestParseKeyRefuses(t *testing.T) {
	es := mustKey(t, NewES256, "k")
	files, _ := es.Files()
	for _, tc := range []struct{ name, data, want string }{
		{"k.txt", "x", "want a name ending"},
		{"a.b.pem", string(files["k.pem"]), "key id"},
		{"k.pem", string(files["k.key"]), "want PUBLIC KEY"},
		{"k.pem", string(files["k.pem"]) + string(files["k.pem"]), "exactly one PEM block"},
		{"k.pem", "not pem", "exactly one PEM block"},
		{"k.key", string(files["k.pem"]), "want EC PRIVATE KEY or PRIVATE KEY"},
		{"k.hs256", "short", "want 32 to 512"},
		{"k.hs256", strings.Repeat("a", 40) + "\"", "character at offset 40"},
		{"k.hs256", strings.Repeat("a", 40) + "$", "character at offset 40"},
	} {
		_, err := ParseKey(tc.name, []byte(tc.data))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "key file "+tc.name) {
			t.Errorf("ParseKey(%s) = %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	if _, err := ParseKey("k.hs256", []byte(strings.Repeat("a", 40)+"\n")); err != nil {
		t.Errorf("secret with a trailing newline: %v", err)
	}
}

func TestFromSubprotocols(t *testing.T) {
	for _, tc := range []struct {
		header, want string
		found        bool
	}{
		{"x-nv-sessionid.s1, x-nv-token.a.b.c", "a.b.c", true},
		{"x-nv-token.a.b.c,x-nv-sessionid.s1", "a.b.c", true},
		{"x-nv-token.a.b.c x-nv-token.d.e.f", "d.e.f", true},
		{"x-nv-token.", "", true},
		{"x-nv-sessionid.s1", "", false},
		{"xx-nv-token.a.b.c", "", false},
		{"", "", false},
	} {
		got, found := FromSubprotocols(tc.header)
		if got != tc.want || found != tc.found {
			t.Errorf("FromSubprotocols(%q) = %q, %v; want %q, %v", tc.header, got, found, tc.want, tc.found)
		}
	}
	if Subprotocol("a.b.c") != "x-nv-token.a.b.c" {
		t.Error("Subprotocol")
	}
}

func TestReasonStatus(t *testing.T) {
	for _, r := range Reasons {
		want := 401
		if r == WrongAudience || r == WrongSession {
			want = 403
		}
		if r.Status() != want {
			t.Errorf("%s: status %d, want %d", r, r.Status(), want)
		}
	}
}
