package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
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
