package sessionid

import (
	"strings"
	"testing"
	"unicode/utf8"
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

// TestValidateNamesTheCharacter checks that a refused id's error names the character
// the client wrote, not a byte of it read as another character.
func TestValidateNamesTheCharacter(t *testing.T) {
	for id, want := range map[string]string{
		"sessión":   `'ó' (U+00F3) at offset 5`,
		"\u0441ess": `'с' (U+0441) at offset 0`,
		"a\xffb":    "the byte 0xff (not UTF-8) at offset 1",
		"a b":       `' ' at offset 1;`,
	} {
		err := Validate(id)
		if err == nil || !strings.Contains(err.Error(), want) || !utf8.ValidString(err.Error()) {
			t.Errorf("Validate(%q) = %v, want it to say %s", id, err, want)
		}
	}
}
