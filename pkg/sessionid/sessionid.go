// Package sessionid validates and mints session ids.
//
// A session id travels in a websocket subprotocol token, an HTTP header, a query string, an HAProxy
// runtime API command and a NATS KV value, so it is restricted to characters that are inert in all
// of them: the RFC 3986 unreserved set, at most 128 characters, and never "." or "..", which URL
// resolution treats as path segments to remove (the Data Plane API driver puts the id in a path).
package sessionid

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// MaxLen is the longest session id accepted.
const MaxLen = 128

// Validate reports why id is not a valid session id, or nil.
func Validate(id string) error {
	if id == "" {
		return fmt.Errorf("session id is empty")
	}
	if len(id) > MaxLen {
		return fmt.Errorf("session id is %d characters, more than %d", len(id), MaxLen)
	}
	for i := 0; i < len(id); i++ {
		if !allowed(id[i]) {
			return fmt.Errorf("session id has %s at offset %d; only A-Z a-z 0-9 . _ ~ - are allowed", quoteAt(id, i), i)
		}
	}
	if id == "." || id == ".." {
		return fmt.Errorf("session id %q is a URL dot-segment", id)
	}
	return nil
}

// quoteAt quotes the character that starts at byte i of id: a whole UTF-8 character, never one of
// its bytes read as Latin-1, and an invalid byte as \xNN.
func quoteAt(id string, i int) string {
	r, size := utf8.DecodeRuneInString(id[i:])
	if r == utf8.RuneError && size <= 1 {
		return fmt.Sprintf(`'\x%02x'`, id[i])
	}
	return strconv.QuoteRune(r)
}

func allowed(c byte) bool {
	switch {
	case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		return true
	case c == '.', c == '_', c == '~', c == '-':
		return true
	}
	return false
}

// New returns a fresh 128-bit random id, URL-safe base64 without padding (22 characters).
func New() string {
	var b [16]byte
	// Since Go 1.24 crypto/rand.Read never returns an error: it aborts the process instead.
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
