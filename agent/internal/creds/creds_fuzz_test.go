package creds

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// refusal is the shape of every creds error: the field (or "body"), then what is wrong.
var refusal = regexp.MustCompile(`^(body|stunIp|stunPort|username|password|privateSharedPort|turnDetails(\.(username|password|uris|relayProtocol|transportPolicy|relayLocation))?(\[\d+\])?): \S`)

// FuzzCredsParse feeds any body to Parse. A refusal names the field and never repeats a
// username or password that was sent; accepted credentials hold only allowed values and read
// back the same from their own JSON.
func FuzzCredsParse(f *testing.F) {
	for _, s := range []string{
		`{"stunIp":"1.2.3.4","stunPort":3478,"username":"u","password":"p"}`,
		`{"stunIp":"stun.example.com","stunPort":3478,"username":"u","password":"p","privateSharedPort":47998,"turnDetails":{"username":"tu","password":"tp","uris":["turn:1.2.3.4:3478"],"relayProtocol":"UDP","transportPolicy":"RELAY","relayLocation":"CSP"}}`,
		`{"stunIp":"1.2.3.4\n","stunPort":0,"username":"u","password":"p"}`,
		`{"stunIp":"$(reboot)","stunPort":65536,"username":"u","password":"p"}`,
		`{"stunIp":"::1","stunPort":"3478","username":1,"password":"hunter2-secret"}`,
		`{"stunIp":"a..b","stunPort":1,"username":"u","password":"p","turnDetails":{"username":"u","password":"p","uris":["http://x"],"relayProtocol":"UDP","transportPolicy":"ALL","relayLocation":"GFN"}}`,
		`{"turnDetails":{"uris":[1]}}`, `[]`, `{}`, `{"stunIp":"1.2.3.4"} {}`, ``, `{"stunPort":1e400}`, `{"stunPort":-1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := Parse(body)
		if err != nil {
			msg := err.Error()
			if !refusal.MatchString(msg) {
				t.Fatalf("refusal %q does not name the field", msg)
			}
			for _, secret := range secrets(body) {
				if strings.Contains(msg, secret) {
					t.Fatalf("refusal %q repeats the secret %q", msg, secret)
				}
			}
			return
		}
		if c.StunIP == "" || !validHost(c.StunIP) || !validPort(c.StunPort) {
			t.Fatalf("accepted stun %q:%d", c.StunIP, c.StunPort)
		}
		if c.PrivateSharedPort != nil && !validPort(*c.PrivateSharedPort) {
			t.Fatalf("accepted privateSharedPort %d", *c.PrivateSharedPort)
		}
		if td := c.TurnDetails; td != nil {
			if !slices.Contains(RelayProtocols, td.RelayProtocol) || !slices.Contains(TransportPolicies, td.TransportPolicy) ||
				!slices.Contains(RelayLocations, td.RelayLocation) || len(td.URIs) == 0 {
				t.Fatalf("accepted turn details: protocol %q, policy %q, location %q, %d uris", td.RelayProtocol, td.TransportPolicy, td.RelayLocation, len(td.URIs))
			}
			for _, u := range td.URIs {
				if !strings.HasPrefix(u, "turn:") && !strings.HasPrefix(u, "turns:") {
					t.Fatalf("accepted relay uri %q", u)
				}
			}
		}
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("own encoding %s refused: %v", out, err)
		}
		a, _ := json.Marshal(again)
		if string(a) != string(out) {
			t.Fatalf("round trip changed %s into %s", out, a)
		}
	})
}

// secrets returns the usernames and passwords in body long enough to be told apart from the
// words of an error message.
func secrets(body []byte) []string {
	var raw struct {
		Username, Password string
		TurnDetails        struct{ Username, Password string }
	}
	if json.Unmarshal(body, &raw) != nil {
		return nil
	}
	var out []string
	for _, s := range []string{raw.Username, raw.Password, raw.TurnDetails.Username, raw.TurnDetails.Password} {
		if len(s) >= 12 {
			out = append(out, s)
		}
	}
	return out
}
