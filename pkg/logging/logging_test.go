package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr string
		json    bool
		logged  bool
	}{
		{"default json", Options{}, "", true, true},
		{"debug json", Options{Level: "debug", Format: "json"}, "", true, true},
		{"warn hides info", Options{Level: "warn"}, "", true, false},
		{"console", Options{Format: "console"}, "", false, true},
		{"bad level", Options{Level: "loud"}, `log level "loud"`, false, false},
		{"bad format", Options{Format: "xml"}, `log format "xml"`, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			tt.opts.Out = &buf
			log, err := New(tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			log.Info().Str("route", "abc").Msg("hello")
			if !tt.logged {
				if buf.Len() != 0 {
					t.Fatalf("logged %q", buf.String())
				}
				return
			}
			var m map[string]any
			isJSON := json.Unmarshal(buf.Bytes(), &m) == nil
			if isJSON != tt.json {
				t.Fatalf("json=%v, output %q", isJSON, buf.String())
			}
			if !strings.Contains(buf.String(), "hello") {
				t.Fatalf("output %q", buf.String())
			}
		})
	}
}

func TestClip(t *testing.T) {
	long := strings.Repeat("k", 10<<10)
	if got := Clip(long); len(got) > MaxValue+32 || !strings.HasSuffix(got, "…(10240 bytes)") {
		t.Errorf("Clip of 10 KB = %q", got)
	}
	if got := Clip("inst-1"); got != "inst-1" {
		t.Errorf("Clip of a short value = %q", got)
	}
	// A multi-byte character cut in the middle is dropped, not left as a broken byte.
	if got := Clip(strings.Repeat("a", MaxValue-1) + "é" + long); !utf8.ValidString(got) {
		t.Errorf("Clip left invalid UTF-8: %q", got)
	}
}
