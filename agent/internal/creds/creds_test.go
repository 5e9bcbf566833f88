package creds

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

const full = `{"stunIp":"stun.example.com","stunPort":3478,"username":"user","password":"pass","privateSharedPort":49100,
"turnDetails":{"username":"turnuser","password":"turnpass","uris":["turns:1.2.3.4:443?transport=tcp","turn:1.2.3.4:3478"],
"relayProtocol":"TCP","transportPolicy":"ALL","relayLocation":"CSP"},"extra":1}`

func TestParseFull(t *testing.T) {
	c, err := Parse([]byte(full))
	if err != nil {
		t.Fatal(err)
	}
	if c.StunIP != "stun.example.com" || c.StunPort != 3478 || *c.PrivateSharedPort != 49100 || c.TurnDetails.TransportPolicy != "ALL" || len(c.TurnDetails.URIs) != 2 {
		t.Errorf("parsed %#v", c.Summary())
	}
	b, _ := json.Marshal(c.Summary())
	for _, secret := range []string{"user", "pass", "turnuser", "turnpass", "1.2.3.4"} {
		if strings.Contains(string(b), secret) {
			t.Errorf("summary %s leaks %q", b, secret)
		}
	}
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c)} {
		if strings.Contains(s, "pass") {
			t.Errorf("formatting leaks: %s", s)
		}
	}
	if _, err := Parse([]byte(`{"stunIp":"10.0.0.1","stunPort":1,"username":"","password":""}`)); err != nil {
		t.Errorf("minimal body refused: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	turn := func(mod string) string {
		return `{"stunIp":"1.2.3.4","stunPort":3478,"username":"u","password":"secret-pw","turnDetails":{` + mod + `}}`
	}
	okTurn := `"username":"u","password":"p","uris":["turn:x"],"relayProtocol":"TCP","transportPolicy":"ALL","relayLocation":"CSP"`
	tests := []struct{ body, want string }{
		{``, "body: a JSON object is required"},
		{`[]`, "body: must be a JSON object"},
		{`{"stunIp":`, "body: malformed JSON"},
		{`{"stunIp":"a"}{}`, "body: unexpected data"},
		{`{"stunPort":3478,"username":"u","password":"p"}`, "stunIp: field required"},
		{`{"stunIp":"","stunPort":3478,"username":"u","password":"p"}`, "stunIp: must not be empty"},
		{`{"stunIp":"bad host!","stunPort":3478,"username":"u","password":"p"}`, "stunIp: must be an IP address or a host name"},
		{`{"stunIp":"a","username":"u","password":"p"}`, "stunPort: field required"},
		{`{"stunIp":"a","stunPort":"3478","username":"u","password":"p"}`, "stunPort: must be an integer"},
		{`{"stunIp":"a","stunPort":34.5,"username":"u","password":"p"}`, "stunPort: must be an integer"},
		{`{"stunIp":"a","stunPort":0,"username":"u","password":"p"}`, "stunPort: must be from 1 to 65535"},
		{`{"stunIp":"a","stunPort":1,"password":"p"}`, "username: field required"},
		{`{"stunIp":"a","stunPort":1,"username":"u"}`, "password: field required"},
		{`{"stunIp":"a","stunPort":1,"username":"u","password":7}`, "password: must be a string"},
		{`{"stunIp":"a","stunPort":1,"username":"u","password":"p","privateSharedPort":70000}`, "privateSharedPort: must be from 1 to 65535"},
		{`{"stunIp":"a","stunPort":1,"username":"u","password":"p","turnDetails":"x"}`, "turnDetails: must be an object"},
		{turn(`"password":"p","uris":["turn:x"],"relayProtocol":"TCP","transportPolicy":"ALL","relayLocation":"CSP"`), "turnDetails.username: field required"},
		{turn(`"username":"u","uris":["turn:x"],"relayProtocol":"TCP","transportPolicy":"ALL","relayLocation":"CSP"`), "turnDetails.password: field required"},
		{turn(`"username":"u","password":"p","uris":[],"relayProtocol":"TCP","transportPolicy":"ALL","relayLocation":"CSP"`), "turnDetails.uris: at least one"},
		{turn(`"username":"u","password":"p","uris":["http://x"],"relayProtocol":"TCP","transportPolicy":"ALL","relayLocation":"CSP"`), "turnDetails.uris[0]: must start with turn: or turns:"},
		{turn(`"username":"u","password":"p","uris":[1],"relayProtocol":"TCP","transportPolicy":"ALL","relayLocation":"CSP"`), "turnDetails.uris"},
		{turn(strings.Replace(okTurn, `"TCP"`, `"SCTP"`, 1)), "turnDetails.relayProtocol: must be one of UDP, TCP, TLS"},
		{turn(strings.Replace(okTurn, `"ALL"`, `"SOME"`, 1)), "turnDetails.transportPolicy: must be one of ALL, RELAY, DIRECT"},
		{turn(strings.Replace(okTurn, `"CSP"`, `"ISP"`, 1)), "turnDetails.relayLocation: must be one of CSP, GFN"},
		{turn(strings.Replace(okTurn, `,"relayLocation":"CSP"`, ``, 1)), "turnDetails.relayLocation: field required"},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.body))
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("Parse(%s) = %v, want %q", tt.body, err, tt.want)
			continue
		}
		if strings.Contains(err.Error(), "secret-pw") {
			t.Errorf("error repeats a secret: %v", err)
		}
	}
}
