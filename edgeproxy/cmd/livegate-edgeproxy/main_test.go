package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestCheckConfigDataPlaneAPI: check-config refuses the Data Plane API settings run would refuse,
// without contacting the API, and never repeats a password put in the URL.
func TestCheckConfigDataPlaneAPI(t *testing.T) {
	dir := t.TempDir()
	password := filepath.Join(dir, "password")
	if err := os.WriteFile(password, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"check-config", "--state-dir", dir, "--media=off", "--public-host", "edge.example.test",
		"--tls-cert", "/etc/haproxy/edge.pem", "--haproxy-map", "/etc/haproxy/maps/livegate.map"}
	// Port 9 (discard) has nothing listening: a check that contacted the API would fail.
	dpa := []string{"--dataplaneapi-url", "http://127.0.0.1:9", "--dataplaneapi-user", "admin"}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		code int
		msg  string
	}{
		{"valid", []string{"--dataplaneapi-password-file", password}, nil, 0, "configuration OK"},
		{"no password file", nil, nil, 1, "--dataplaneapi-password-file is required"},
		{"missing password file", []string{"--dataplaneapi-password-file", filepath.Join(dir, "nope")}, nil, 1, "data plane api password file"},
		{"empty password file", []string{"--dataplaneapi-password-file", empty}, nil, 1, "is empty"},
		{"no user", []string{"--dataplaneapi-password-file", password, "--dataplaneapi-user", ""}, nil, 1, "user is empty"},
		{"url without scheme", []string{"--dataplaneapi-password-file", password, "--dataplaneapi-url", "127.0.0.1:5555"}, nil, 1, `data plane api url "127.0.0.1:5555"`},
		{"password in a url without scheme", []string{"--dataplaneapi-password-file", password, "--dataplaneapi-url", "admin:hunter2@127.0.0.1:5555"}, nil, 1, `data plane api url "xxxxx@127.0.0.1:5555"`},
		{"password in a bad url", []string{"--dataplaneapi-password-file", password, "--dataplaneapi-url", "http://admin:hunter2@127.0.0.1:port"}, nil, 1, `data plane api url "http://xxxxx@127.0.0.1:port"`},
		{"password in a url", []string{"--dataplaneapi-password-file", password, "--dataplaneapi-url", "http://admin:hunter2@127.0.0.1:5555"}, nil, 1, "not in the url"},
		// The alias on the command line wins over the canonical name in the environment.
		{"alias over environment", []string{"--haproxy-driver", "dataplaneapi"}, map[string]string{"LIVEGATE_EDGEPROXY_DRIVER": "runtime"}, 1, "--dataplaneapi-password-file is required"},
		{"alias in the environment", nil, map[string]string{"LIVEGATE_EDGEPROXY_HAPROXY_DRIVER": "dataplaneapi"}, 1, "--dataplaneapi-password-file is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			args := append(append([]string{}, base...), dpa...)
			if tt.env == nil && !slices.Contains(tt.args, "--haproxy-driver") {
				args = append(args, "--driver", "dataplaneapi")
			}
			var out, errOut bytes.Buffer
			code := dispatch(context.Background(), append(args, tt.args...), &out, &errOut)
			text := out.String() + errOut.String()
			if code != tt.code || !strings.Contains(text, tt.msg) {
				t.Fatalf("exit %d (want %d), output %q, want %q", code, tt.code, text, tt.msg)
			}
			if strings.Contains(text, "hunter2") {
				t.Fatalf("output %q shows the password", text)
			}
		})
	}
}
