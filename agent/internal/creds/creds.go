// Package creds parses and validates the STUN/TURN credentials posted to /v1/streaming/creds. The
// credentials reach only the app's loopback API; everything else gets a Summary, which holds no
// secret.
package creds

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/livegate/livegate/agent/internal/jsonbody"
)

// TURN is the optional relay configuration.
type TURN struct {
	Username        string   `json:"username"`
	Password        string   `json:"password"`
	URIs            []string `json:"uris"`
	RelayProtocol   string   `json:"relayProtocol"`
	TransportPolicy string   `json:"transportPolicy"`
	RelayLocation   string   `json:"relayLocation"`
}

// Credentials is a validated /v1/streaming/creds body. Its JSON form is the body's.
type Credentials struct {
	StunIP            string `json:"stunIp"`
	StunPort          int    `json:"stunPort"`
	Username          string `json:"username"`
	Password          string `json:"password"`
	PrivateSharedPort *int   `json:"privateSharedPort,omitempty"`
	TurnDetails       *TURN  `json:"turnDetails,omitempty"`
}

// String keeps the secrets out of any %v that slips into a log.
func (Credentials) String() string { return "[credentials]" }

// GoString does the same for %#v.
func (Credentials) GoString() string { return "[credentials]" }

// Summary is what may be said about credentials outside the app's loopback API.
type Summary struct {
	StunIP            string `json:"stunIp"`
	StunPort          int    `json:"stunPort"`
	PrivateSharedPort *int   `json:"privateSharedPort,omitempty"`
	HasTurn           bool   `json:"hasTurn"`
	RelayProtocol     string `json:"relayProtocol,omitempty"`
	TransportPolicy   string `json:"transportPolicy,omitempty"`
	RelayLocation     string `json:"relayLocation,omitempty"`
}

// Summary describes c without usernames, passwords or relay URIs.
func (c Credentials) Summary() Summary {
	s := Summary{StunIP: c.StunIP, StunPort: c.StunPort, PrivateSharedPort: c.PrivateSharedPort}
	if c.TurnDetails != nil {
		s.HasTurn = true
		s.RelayProtocol = c.TurnDetails.RelayProtocol
		s.TransportPolicy = c.TurnDetails.TransportPolicy
		s.RelayLocation = c.TurnDetails.RelayLocation
	}
	return s
}

// The accepted enumerations.
var (
	TransportPolicies = []string{"ALL", "RELAY", "DIRECT"}
	RelayLocations    = []string{"CSP", "GFN"}
	RelayProtocols    = []string{"UDP", "TCP", "TLS"}
)

// rawTURN and rawCreds tell a missing field from an empty one.
type rawTURN struct {
	Username        *string   `json:"username"`
	Password        *string   `json:"password"`
	URIs            *[]string `json:"uris"`
	RelayProtocol   *string   `json:"relayProtocol"`
	TransportPolicy *string   `json:"transportPolicy"`
	RelayLocation   *string   `json:"relayLocation"`
}

type rawCreds struct {
	StunIP            *string  `json:"stunIp"`
	StunPort          *int     `json:"stunPort"`
	Username          *string  `json:"username"`
	Password          *string  `json:"password"`
	PrivateSharedPort *int     `json:"privateSharedPort"`
	TurnDetails       *rawTURN `json:"turnDetails"`
}

// Parse decodes and validates a body. The error names the field and says what is wrong; it never
// repeats a value, which may be a secret.
func Parse(body []byte) (Credentials, error) {
	var raw rawCreds
	if err := jsonbody.Decode(body, &raw); err != nil {
		return Credentials{}, err
	}
	var c Credentials
	var err error
	if c.StunIP, err = required("stunIp", raw.StunIP); err != nil {
		return Credentials{}, err
	}
	if !validHost(c.StunIP) {
		return Credentials{}, errors.New("stunIp: must be an IP address or a host name")
	}
	if raw.StunPort == nil {
		return Credentials{}, errors.New("stunPort: field required")
	}
	if c.StunPort = *raw.StunPort; !validPort(c.StunPort) {
		return Credentials{}, errors.New("stunPort: must be from 1 to 65535")
	}
	if c.Username, err = present("username", raw.Username); err != nil {
		return Credentials{}, err
	}
	if c.Password, err = present("password", raw.Password); err != nil {
		return Credentials{}, err
	}
	if raw.PrivateSharedPort != nil {
		if !validPort(*raw.PrivateSharedPort) {
			return Credentials{}, errors.New("privateSharedPort: must be from 1 to 65535")
		}
		p := *raw.PrivateSharedPort
		c.PrivateSharedPort = &p
	}
	if raw.TurnDetails != nil {
		t, err := parseTURN(raw.TurnDetails)
		if err != nil {
			return Credentials{}, err
		}
		c.TurnDetails = t
	}
	return c, nil
}

func parseTURN(r *rawTURN) (*TURN, error) {
	var t TURN
	var err error
	if t.Username, err = present("turnDetails.username", r.Username); err != nil {
		return nil, err
	}
	if t.Password, err = present("turnDetails.password", r.Password); err != nil {
		return nil, err
	}
	if r.URIs == nil || len(*r.URIs) == 0 {
		return nil, errors.New("turnDetails.uris: at least one URI is required")
	}
	for i, u := range *r.URIs {
		if !strings.HasPrefix(u, "turn:") && !strings.HasPrefix(u, "turns:") {
			return nil, fmt.Errorf("turnDetails.uris[%d]: must start with turn: or turns:", i)
		}
	}
	t.URIs = append([]string(nil), *r.URIs...)
	if t.RelayProtocol, err = oneOf("turnDetails.relayProtocol", r.RelayProtocol, RelayProtocols); err != nil {
		return nil, err
	}
	if t.TransportPolicy, err = oneOf("turnDetails.transportPolicy", r.TransportPolicy, TransportPolicies); err != nil {
		return nil, err
	}
	if t.RelayLocation, err = oneOf("turnDetails.relayLocation", r.RelayLocation, RelayLocations); err != nil {
		return nil, err
	}
	return &t, nil
}

func required(field string, v *string) (string, error) {
	if v == nil {
		return "", fmt.Errorf("%s: field required", field)
	}
	if *v == "" {
		return "", fmt.Errorf("%s: must not be empty", field)
	}
	return *v, nil
}

func present(field string, v *string) (string, error) {
	if v == nil {
		return "", fmt.Errorf("%s: field required", field)
	}
	return *v, nil
}

func oneOf(field string, v *string, allowed []string) (string, error) {
	if v == nil {
		return "", fmt.Errorf("%s: field required", field)
	}
	for _, a := range allowed {
		if *v == a {
			return a, nil
		}
	}
	return "", fmt.Errorf("%s: must be one of %s", field, strings.Join(allowed, ", "))
}

func validPort(p int) bool { return p >= 1 && p <= 65535 }

func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}
