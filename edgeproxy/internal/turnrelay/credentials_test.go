package turnrelay

import (
	"fmt"
	"strings"
	"testing"
	"time"

	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The password of the TURN REST API draft's scheme as coturn computes it:
// echo -n "1700000000:sess-1" | openssl dgst -sha1 -hmac "0123456789abcdef" -binary | base64
func TestIssueMatchesCoturn(t *testing.T) {
	c := Issue([]byte("0123456789abcdef"), "sess-1", time.Unix(1700000000, 500))
	if c.Username != "1700000000:sess-1" {
		t.Fatalf("username %q", c.Username)
	}
	if c.Password != "3LWT6QnRNFnbb/OFDIn6KxPCqMI=" {
		t.Fatalf("password %q", c.Password)
	}
	if !c.Expires.Equal(time.Unix(1700000000, 0)) {
		t.Fatalf("expires %v", c.Expires)
	}
	if s := fmt.Sprintf("%v %#v", c, c); strings.Contains(s, c.Password) {
		t.Fatalf("formatting leaks the password: %q", s)
	}
}

func TestCheck(t *testing.T) {
	now := time.Unix(1700000000, 0)
	served := func(s string) bool { return s == "live" }
	for _, tc := range []struct {
		name, username, session, refused string
	}{
		{"valid", "1700000060:live", "live", ""},
		{"expires now", "1700000000:live", "live", RefusedExpired},
		{"expired", "1699999999:live", "live", RefusedExpired},
		{"session ended", "1700000060:gone", "gone", RefusedNotServed},
		{"no colon", "1700000060", "", RefusedMalformed},
		{"empty expiry", ":live", "", RefusedMalformed},
		{"signed expiry", "+1700000060:live", "", RefusedMalformed},
		{"negative expiry", "-1:live", "", RefusedMalformed},
		{"not a number", "soon:live", "", RefusedMalformed},
		{"huge expiry", "99999999999999999999:live", "", RefusedMalformed},
		{"empty session", "1700000060:", "", RefusedMalformed},
		{"bad session", "1700000060:a b", "", RefusedMalformed},
		{"session with colon", "1700000060:a:b", "", RefusedMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			session, refused := Check(tc.username, now, served)
			if session != tc.session || refused != tc.refused {
				t.Fatalf("Check(%q) = %q, %q; want %q, %q", tc.username, session, refused, tc.session, tc.refused)
			}
		})
	}
}

func TestParseSecrets(t *testing.T) {
	for _, tc := range []struct {
		name, data string
		want       []string
		err        string
	}{
		{"one", "0123456789abcdef\n", []string{"0123456789abcdef"}, ""},
		{"new then old", "# rotated today\nnew-secret-0123456789\n\n  old-secret-0123456789  \n", []string{"new-secret-0123456789", "old-secret-0123456789"}, ""},
		{"crlf", "0123456789abcdef\r\n", []string{"0123456789abcdef"}, ""},
		{"empty", "\n# nothing\n", nil, "no secret"},
		{"short", "short\n", nil, "line 1: a secret of 5 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSecrets([]byte(tc.data))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				if strings.Contains(err.Error(), "short\n") || strings.Contains(err.Error(), `"short"`) {
					t.Fatalf("error quotes the secret: %v", err)
				}
				return
			}
			if err != nil || len(got) != len(tc.want) {
				t.Fatalf("got %q, %v", got, err)
			}
			for i := range got {
				if string(got[i]) != tc.want[i] {
					t.Fatalf("secret %d = %q, want %q", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestCurrent(t *testing.T) {
	r := &Relay{cfg: Config{CredentialTTL: time.Hour, URIs: []string{"turn:h:3478"}}}
	list := [][]byte{[]byte(secretB), []byte(secretA)}
	r.sec.p.Store(&list)
	now := time.Unix(1700000000, 0)
	issued := r.Credentials("s1", now)
	renewAt := now.Add(30 * time.Minute)
	withOld := Issue([]byte(secretA), "s1", now.Add(time.Hour))
	for _, tc := range []struct {
		name    string
		session string
		change  func(*livegatev1.TurnRelay)
		at      time.Time
		want    bool
	}{
		{"just issued", "s1", nil, now, true},
		{"before renewal", "s1", nil, renewAt.Add(-time.Second), true},
		{"renewal due", "s1", nil, renewAt, false},
		{"another session", "s2", nil, now, false},
		{"other uris", "s1", func(p *livegatev1.TurnRelay) { p.Uris = []string{"turn:old:3478"} }, now, false},
		{"issued under the old secret", "s1", func(p *livegatev1.TurnRelay) { p.Credential = withOld.Password }, now, false},
		{"expiry disagrees with the username", "s1", func(p *livegatev1.TurnRelay) { p.ExpiresAt = timestamppb.New(now.Add(2 * time.Hour)) }, now, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := proto.Clone(issued).(*livegatev1.TurnRelay)
			if tc.change != nil {
				tc.change(p)
			}
			ok, at := r.Current(tc.session, p, tc.at)
			if ok != tc.want || (ok && !at.Equal(renewAt)) {
				t.Fatalf("Current = %v, %v; want %v, %v", ok, at, tc.want, renewAt)
			}
		})
	}
	if ok, _ := r.Current("s1", nil, now); ok {
		t.Fatal("no credential is current")
	}
}
