package turnrelay

import (
	"crypto/hmac"
	"crypto/md5"  //nolint:gosec // the TURN long-term credential key is MD5 by RFC 5389
	"crypto/sha1" //nolint:gosec // the TURN REST API password is HMAC-SHA1, as coturn computes it
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/livegate/livegate/pkg/sessionid"
)

// Credential is what a session's client authenticates with: the TURN REST API scheme that
// coturn calls use-auth-secret. Username is "<unix expiry>:<session id>", Password
// base64(HMAC-SHA1(secret, Username)).
type Credential struct {
	Username string
	Password string
	Expires  time.Time
}

// String keeps the password out of any %v that slips into a log.
func (Credential) String() string { return "[turn credential]" }

// GoString does the same for %#v.
func (Credential) GoString() string { return "[turn credential]" }

// Issue returns session's credential under secret, valid until expires (whole seconds).
func Issue(secret []byte, session string, expires time.Time) Credential {
	u := strconv.FormatInt(expires.Unix(), 10) + ":" + session
	return Credential{Username: u, Password: Password(secret, u), Expires: time.Unix(expires.Unix(), 0)}
}

// Password is base64(HMAC-SHA1(secret, username)).
func Password(secret []byte, username string) string {
	m := hmac.New(sha1.New, secret)
	m.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// Key is the long-term credential key the STUN MESSAGE-INTEGRITY of username's requests is
// computed with: MD5(username ":" realm ":" password).
func Key(secret []byte, username, realm string) []byte {
	h := md5.New() //nolint:gosec // see the import
	fmt.Fprintf(h, "%s:%s:%s", username, realm, Password(secret, username))
	return h.Sum(nil)
}

// The reasons a credential is refused, as the refusal metric labels them.
const (
	RefusedMalformed   = "credential_malformed"
	RefusedExpired     = "credential_expired"
	RefusedNotServed   = "session_not_served"
	RefusedIntegrity   = "credential_integrity"
	RefusedPeer        = "peer_forbidden"
	RefusedPeerTraffic = "peer_traffic_dropped"
	RefusedMismatch    = "session_mismatch"
)

// ErrMalformed is a username not of the form "<unix expiry>:<session id>".
var ErrMalformed = errors.New("turn username: want <unix expiry>:<session id>")

// ParseUsername splits a username into its expiry and session id.
func ParseUsername(u string) (time.Time, string, error) {
	exp, session, ok := strings.Cut(u, ":")
	if !ok || exp == "" || len(exp) > 19 {
		return time.Time{}, "", ErrMalformed
	}
	secs, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || secs <= 0 || exp[0] == '+' {
		return time.Time{}, "", ErrMalformed
	}
	if err := sessionid.Validate(session); err != nil {
		return time.Time{}, "", fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return time.Unix(secs, 0), session, nil
}

// Check says whether username may be used at now by a session that served reports on. It
// returns the session id, or the refusal reason.
func Check(username string, now time.Time, served func(session string) bool) (session, refused string) {
	exp, session, err := ParseUsername(username)
	switch {
	case err != nil:
		return "", RefusedMalformed
	case !now.Before(exp):
		return session, RefusedExpired
	case !served(session):
		return session, RefusedNotServed
	}
	return session, ""
}
