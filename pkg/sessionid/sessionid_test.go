package sessionid

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		id   string
		ok   bool
	}{
		{"simple", "abc-DEF_123.x~y", true},
		{"max length", strings.Repeat("a", MaxLen), true},
		{"empty", "", false},
		{"too long", strings.Repeat("a", MaxLen+1), false},
		{"newline", "abc\nset map", false},
		{"space", "abc def", false},
		{"semicolon", "abc;def", false},
		{"hash", "abc#def", false},
		{"slash", "abc/def", false},
		{"percent", "abc%20", false},
		{"shell", "$(reboot)", false},
		{"nul", "a\x00b", false},
		{"unicode", "sessión", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.id)
			if (err == nil) != tt.ok {
				t.Fatalf("Validate(%q) = %v, want ok=%v", tt.id, err, tt.ok)
			}
		})
	}
}

// TestValidateNamesWholeCharacter: the error quotes a non-ASCII character as itself, not its first
// byte read as Latin-1 ("Ã" for "ó").
func TestValidateNamesWholeCharacter(t *testing.T) {
	for id, want := range map[string]string{
		"sessión":  `session id has 'ó' at offset 5`,
		"s\xffx":   `session id has '\xff' at offset 1`,
		"a\u00a0b": `session id has '\u00a0' at offset 1`,
	} {
		if err := Validate(id); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Validate(%q) = %v, want it to start with %s", id, err, want)
		}
	}
}

func TestNew(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		id := New()
		if err := Validate(id); err != nil {
			t.Fatalf("New() = %q: %v", id, err)
		}
		if len(id) != 22 {
			t.Fatalf("New() = %q, want 22 characters", id)
		}
		if seen[id] {
			t.Fatalf("New() repeated %q", id)
		}
		seen[id] = true
	}
}
