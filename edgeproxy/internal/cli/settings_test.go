package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/rs/zerolog"
)

// TestCheckConfigRefusesWhatRunRefuses: a setting run stops on fails check-config the same way,
// before anything is started.
func TestCheckConfigRefusesWhatRunRefuses(t *testing.T) {
	base := []string{"--state-dir", t.TempDir(), "--tls-self-signed", "--media=off", "--public-host", "edge.example.test"}
	tests := []struct {
		name string
		args []string
		msg  string
	}{
		{"log level", []string{"--log-level", "loud"}, `flag --log-level: log level "loud"`},
		{"log format", []string{"--log-format", "xml"}, `flag --log-format: log format "xml"`},
		{"turn relay ports overlap media", []string{"--turn", "--turn-secret-file", "/s", "--public-ip", "198.18.0.1", "--turn-relay-ports", "19000-21000"}, "relay ports 19000-21000 overlap the media ports 10500-20000"},
		{"turn without secret", []string{"--turn", "--public-ip", "198.18.0.1"}, "--turn-secret-file"},
		{"turn without public ip", []string{"--turn", "--turn-secret-file", "/s"}, "public IPv4 address (--public-ip)"},
		{"turn bad uri", []string{"--turn", "--turn-secret-file", "/s", "--public-ip", "198.18.0.1", "--turn-uris", "stun:x:3478"}, `TURN URI "stun:x:3478"`},
	}
	for _, tt := range tests {
		for name, cmd := range map[string]Command{"run": RunCommand(Hooks{}), "check-config": CheckConfigCommand(Hooks{})} {
			t.Run(tt.name+"/"+name, func(t *testing.T) {
				var out, errOut bytes.Buffer
				code := cmd(context.Background(), append(append([]string{}, base...), tt.args...), &out, &errOut)
				if code != 2 || !strings.Contains(errOut.String(), tt.msg) {
					t.Fatalf("exit %d, stderr %q; want 2 and %q", code, errOut.String(), tt.msg)
				}
			})
		}
	}
}

// TestCheckConfigBuildsTheDriver: with a driver other than runtime, check-config builds it as
// run would, so a setting the driver refuses fails the check.
func TestCheckConfigBuildsTheDriver(t *testing.T) {
	refuse := errors.New("test driver: --test-driver-user is empty")
	tests := []struct {
		name string
		err  error
		code int
		msg  string
	}{
		{"driver refuses its settings", refuse, 1, refuse.Error()},
		{"driver accepts its settings", nil, 0, "configuration OK"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got haproxy.Config
			h := Hooks{Drivers: map[string]DriverFactory{"test": {New: func(_ context.Context, c haproxy.Config, _ zerolog.Logger) (haproxy.Driver, error) {
				got = c
				return nil, tt.err
			}}}}
			var out, errOut bytes.Buffer
			args := []string{"--driver", "test", "--tls-cert", "/etc/haproxy/edge.pem", "--haproxy-map", "/etc/haproxy/livegate.map",
				"--state-dir", t.TempDir(), "--media=off", "--public-host", "edge.example.test"}
			code := CheckConfigCommand(h)(context.Background(), args, &out, &errOut)
			if code != tt.code || !strings.Contains(out.String()+errOut.String(), tt.msg) {
				t.Fatalf("exit %d (want %d), output %q %q, want %q", code, tt.code, out.String(), errOut.String(), tt.msg)
			}
			if got.MapFile != "/etc/haproxy/livegate.map" || got.CertFile != "/etc/haproxy/edge.pem" {
				t.Errorf("driver built for %+v, not the flags' HAProxy configuration", got)
			}
		})
	}
}

// TestMemoryLimit: the default soft limit applies to the edge alone; with --nats-embedded only a
// value some source set does.
func TestMemoryLimit(t *testing.T) {
	file := filepath.Join(t.TempDir(), "edge.toml")
	if err := os.WriteFile(file, []byte("memory-limit-mib = 96\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want int
	}{
		{"default", nil, nil, DefaultMemoryLimitMiB},
		{"set", []string{"--memory-limit-mib", "64"}, nil, 64},
		{"off", []string{"--memory-limit-mib", "0"}, nil, 0},
		{"embedded nats, default", []string{"--nats-embedded"}, nil, 0},
		{"embedded nats, flag", []string{"--nats-embedded", "--memory-limit-mib", "40"}, nil, 40},
		{"embedded nats, environment", []string{"--nats-embedded"}, map[string]string{"LIVEGATE_EDGEPROXY_MEMORY_LIMIT_MIB": "64"}, 64},
		{"embedded nats, file", []string{"--nats-embedded", "--config", file}, nil, 96},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			fs, f := newFlagSet("run", &bytes.Buffer{}, nil)
			args := append([]string{"--state-dir", t.TempDir(), "--tls-self-signed", "--media=off", "--public-host", "edge.example.test"}, tt.args...)
			if err := f.parse(fs, args); err != nil {
				t.Fatal(err)
			}
			s, err := f.settings(nil)
			if err != nil {
				t.Fatal(err)
			}
			if s.memoryLimitMiB != tt.want {
				t.Errorf("memory limit %d MiB, want %d", s.memoryLimitMiB, tt.want)
			}
		})
	}
	fs, f := newFlagSet("run", &bytes.Buffer{}, nil)
	if err := f.parse(fs, []string{"--memory-limit-mib", "-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.settings(nil); err == nil || !strings.Contains(err.Error(), "flag --memory-limit-mib: value -1: must not be negative") {
		t.Errorf("negative limit: %v", err)
	}
}
