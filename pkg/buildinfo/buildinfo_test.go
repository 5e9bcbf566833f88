package buildinfo

import (
	"runtime/debug"
	"testing"
)

func TestRevisionOf(t *testing.T) {
	vcs := []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"}}
	tests := []struct {
		name     string
		settings []debug.BuildSetting
		linked   string
		want     string
	}{
		{"toolchain's record wins", vcs, "0123456789ab", "0123456789abcdef0123456789abcdef01234567"},
		{"linked when -buildvcs=false", []debug.BuildSetting{{Key: "-buildvcs", Value: "false"}}, "0123456789ab", "0123456789ab"},
		{"neither, e.g. built outside git", nil, "", "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := revisionOf(tt.settings, tt.linked); got != tt.want {
				t.Errorf("revisionOf = %q, want %q", got, tt.want)
			}
		})
	}
}
