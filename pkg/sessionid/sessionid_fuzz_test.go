package sessionid

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzValidateSinks checks what an accepted id may contain against every place it travels: it
// must pass through URL paths, query strings, HTTP header tokens, the HAProxy runtime API and
// iptables comments unchanged, so no escaping anywhere can be missing. A refusal must say why.
func FuzzValidateSinks(f *testing.F) {
	for _, s := range []string{
		"abc", "s-1", "A.b_c~d-9", strings.Repeat("z", MaxLen), strings.Repeat("z", MaxLen+1), "",
		".", "..", "...", "a\nset map x y", "a;show info", "a#b", "$(reboot)", "`id`", "a|b", "a&b",
		"-j ACCEPT", "--to-destination", "a\x00b", "sessi\u043en", "a\u00a0b", "%2e%2e", "a/b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := Validate(id)
		if err != nil {
			if msg := err.Error(); !strings.HasPrefix(msg, "session id ") || strings.ContainsAny(msg, "\r\n") {
				t.Fatalf("Validate(%q) = %q: want one line starting with \"session id \"", id, msg)
			}
			return
		}
		if id == "" || len(id) > MaxLen {
			t.Fatalf("Validate accepted %q (%d bytes)", id, len(id))
		}
		for i := 0; i < len(id); i++ {
			c := id[i]
			if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("._~-", c) >= 0) {
				t.Fatalf("Validate accepted %q with %q at %d", id, c, i)
			}
		}
		if url.PathEscape(id) != id || url.QueryEscape(id) != id {
			t.Fatalf("Validate accepted %q, which URLs escape", id)
		}
		if id == "." || id == ".." {
			t.Fatalf("Validate accepted the dot-segment %q, which URL resolution removes from a path", id)
		}
	})
}
