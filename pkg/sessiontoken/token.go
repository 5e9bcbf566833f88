// Package sessiontoken mints and verifies session access tokens: short-lived JWTs (ES256 or
// HS256) that let a browser open one session's signaling at an edge. An orchestrator imports it
// to mint; livegate-edgeproxy has HAProxy check the same rules in its frontend (see
// docs/session-tokens.md), and its `token verify` uses Verifier.
//
// A token carries a kid header naming its key and the claims sid (the session id), nbf and exp
// (required) and aud (optional, "pool:<pool>" or "edge:<edge id>"). The browser sends it as the
// websocket subprotocol x-nv-token.<jwt>: JWTs are base64url and dots, all RFC 7230 token
// characters, so browsers accept them in the WebSocket constructor's protocol list.
package sessiontoken

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/livegate/livegate/pkg/sessionid"
)

// SubprotocolPrefix precedes the token in Sec-WebSocket-Protocol.
const SubprotocolPrefix = "x-nv-token."

// DefaultLeeway is the clock skew allowed on nbf and exp, by this package and the edge alike.
const DefaultLeeway = 30 * time.Second

// Audience prefixes: a token for a pool is accepted by every edge of the pool, one for an edge
// only there.
const (
	PoolAudience = "pool:"
	EdgeAudience = "edge:"
)

// Claims are what a token grants.
type Claims struct {
	SessionID string
	NotBefore time.Time
	Expiry    time.Time
	// Audience is empty (any edge) or PoolAudience/EdgeAudience and a name.
	Audience string
}

// NewClaims are claims for session sid valid from now for ttl.
func NewClaims(sid string, now time.Time, ttl time.Duration) Claims {
	return Claims{SessionID: sid, NotBefore: now, Expiry: now.Add(ttl)}
}

// ValidateAudience reports why aud is not "", "pool:<name>" or "edge:<id>" (names of 1 to 128
// letters, digits, '-' or '_').
func ValidateAudience(aud string) error {
	if aud == "" {
		return nil
	}
	name, ok := strings.CutPrefix(aud, PoolAudience)
	if !ok {
		name, ok = strings.CutPrefix(aud, EdgeAudience)
	}
	if !ok {
		return fmt.Errorf("audience %q: want %s<pool> or %s<edge id>", aud, PoolAudience, EdgeAudience)
	}
	if name == "" || len(name) > 128 || strings.IndexFunc(name, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_')
	}) >= 0 {
		return fmt.Errorf("audience %q: the name must be 1 to 128 letters, digits, '-' or '_'", aud)
	}
	return nil
}

// payload is the JSON of the claims. Aud shadows RegisteredClaims' list form: livegate's
// audience is one string, which HAProxy's jwt_payload_query can compare.
type payload struct {
	jwt.RegisteredClaims
	Aud json.RawMessage `json:"aud,omitempty"`
	SID string          `json:"sid"`
}

// Mint signs c with k.
func Mint(k Key, c Claims) (string, error) {
	if err := sessionid.Validate(c.SessionID); err != nil {
		return "", fmt.Errorf("mint session token: %w", err)
	}
	if err := ValidateAudience(c.Audience); err != nil {
		return "", fmt.Errorf("mint session token: %w", err)
	}
	if !c.Expiry.After(c.NotBefore) {
		return "", errors.New("mint session token: expiry must be after not-before")
	}
	if err := ValidateKeyID(k.ID); err != nil {
		return "", fmt.Errorf("mint session token: %w", err)
	}
	p := payload{SID: c.SessionID, RegisteredClaims: jwt.RegisteredClaims{
		NotBefore: jwt.NewNumericDate(c.NotBefore), ExpiresAt: jwt.NewNumericDate(c.Expiry),
	}}
	if c.Audience != "" {
		p.Aud, _ = json.Marshal(c.Audience)
	}
	var method jwt.SigningMethod
	var key any
	switch {
	case k.Alg == ES256 && k.Private != nil:
		method, key = jwt.SigningMethodES256, k.Private
	case k.Alg == HS256 && len(k.Secret) > 0:
		method, key = jwt.SigningMethodHS256, k.Secret
	default:
		return "", fmt.Errorf("mint session token: key %s cannot sign (an %s key needs its %s file)", k.ID, k.Alg, map[string]string{ES256: PrivateExt, HS256: SecretExt}[k.Alg])
	}
	t := jwt.NewWithClaims(method, p)
	t.Header["kid"] = k.ID
	s, err := t.SignedString(key)
	if err != nil {
		return "", fmt.Errorf("mint session token: %w", err)
	}
	return s, nil
}

// Reason is why a token is refused; the edge counts refusals by these names.
type Reason string

// Refusal reasons, in the order they are checked.
const (
	Missing       Reason = "missing"
	Malformed     Reason = "malformed"
	UnknownKey    Reason = "unknown_key"
	BadSignature  Reason = "bad_signature"
	Expired       Reason = "expired"
	NotYetValid   Reason = "not_yet_valid"
	WrongAudience Reason = "wrong_audience"
	WrongSession  Reason = "wrong_session"
)

// Reasons are all refusal reasons.
var Reasons = []Reason{Missing, Malformed, UnknownKey, BadSignature, Expired, NotYetValid, WrongAudience, WrongSession}

// Status is the HTTP status the edge answers a refusal with: 401 when the token does not
// authenticate, 403 when it does but grants something else.
func (r Reason) Status() int {
	if r == WrongAudience || r == WrongSession {
		return 403
	}
	return 401
}

// Error is a refused token.
type Error struct {
	Reason Reason
	Detail string
}

func (e *Error) Error() string {
	return "session token refused: " + string(e.Reason) + ": " + e.Detail
}

func refuse(r Reason, format string, args ...any) error {
	return &Error{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// ReasonOf is the reason of a refusal from Verify, or "" for another error.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// Shape is the compact JWS form the edge accepts, as a regular expression HAProxy uses too
// (written without backslashes, which HAProxy's quoting would take).
const Shape = `^[A-Za-z0-9_-]+[.][A-Za-z0-9_-]+[.][A-Za-z0-9_-]+$`

var shape = regexp.MustCompile(Shape)

// Verifier checks tokens the way the edge does.
type Verifier struct {
	Keys []Key
	// Audiences are the audiences accepted; a token without aud is accepted anywhere.
	Audiences []string
	// Now is the clock (time.Now when nil); Leeway the skew allowed on nbf and exp.
	Now    func() time.Time
	Leeway time.Duration
}

// Verify checks token for session sid and returns its claims, or an *Error. Errors never quote
// the token.
func (v Verifier) Verify(token, sid string) (Claims, error) {
	if token == "" {
		return Claims{}, refuse(Missing, "no token")
	}
	if len(token) > 4096 || !shape.MatchString(token) {
		return Claims{}, refuse(Malformed, "not three base64url parts joined by dots")
	}
	var p payload
	parser := jwt.NewParser(jwt.WithValidMethods([]string{ES256, HS256}), jwt.WithTimeFunc(v.now),
		jwt.WithLeeway(v.Leeway), jwt.WithExpirationRequired())
	t, _, err := parser.ParseUnverified(token, &p)
	if err != nil {
		return Claims{}, refuse(Malformed, "header or claims are not JSON of the expected types")
	}
	kid, _ := t.Header["kid"].(string)
	switch {
	case kid == "":
		return Claims{}, refuse(Malformed, "no kid header")
	case p.SID == "":
		return Claims{}, refuse(Malformed, "no sid claim")
	case p.ExpiresAt == nil || p.NotBefore == nil:
		return Claims{}, refuse(Malformed, "no exp or nbf claim")
	}
	var key *Key
	for i := range v.Keys {
		if v.Keys[i].ID == kid {
			key = &v.Keys[i]
		}
	}
	if key == nil {
		return Claims{}, refuse(UnknownKey, "no key %q", kid)
	}
	_, err = parser.ParseWithClaims(token, &payload{}, func(t *jwt.Token) (any, error) {
		if t.Method.Alg() != key.Alg {
			return nil, fmt.Errorf("key %s is %s, the token says %s", key.ID, key.Alg, t.Method.Alg())
		}
		if key.Alg == HS256 {
			return key.Secret, nil
		}
		return key.Public, nil
	})
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return Claims{}, refuse(BadSignature, "signature does not verify with key %q", kid)
	case errors.Is(err, jwt.ErrTokenExpired):
		return Claims{}, refuse(Expired, "expired at %s", p.ExpiresAt.UTC().Format(time.RFC3339))
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return Claims{}, refuse(NotYetValid, "valid from %s", p.NotBefore.UTC().Format(time.RFC3339))
	default:
		return Claims{}, refuse(Malformed, "claims do not validate")
	}
	c := Claims{SessionID: p.SID, NotBefore: p.NotBefore.Time, Expiry: p.ExpiresAt.Time}
	if len(p.Aud) > 0 {
		if err := json.Unmarshal(p.Aud, &c.Audience); err != nil || !slices.Contains(v.Audiences, c.Audience) {
			return Claims{}, refuse(WrongAudience, "not for this edge or pool")
		}
	}
	if c.SessionID != sid {
		return Claims{}, refuse(WrongSession, "for another session")
	}
	return c, nil
}

func (v Verifier) now() time.Time {
	if v.Now == nil {
		return time.Now()
	}
	return v.Now()
}

// Subprotocol is the Sec-WebSocket-Protocol entry that carries token.
func Subprotocol(token string) string { return SubprotocolPrefix + token }

// FromSubprotocols finds the token in a Sec-WebSocket-Protocol value: the last x-nv-token.
// entry, entries separated by commas or white space, as the edge reads it.
func FromSubprotocols(header string) (string, bool) {
	token, found := "", false
	for _, p := range strings.FieldsFunc(header, func(c rune) bool { return c == ',' || strings.ContainsRune(" \t\n\v\f\r", c) }) {
		if t, ok := strings.CutPrefix(p, SubprotocolPrefix); ok {
			token, found = t, true
		}
	}
	return token, found
}
