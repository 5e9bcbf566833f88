package settings

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAPITokenFileEverySource(t *testing.T) {
	s, err := load(t, []string{"--api-token-file=/run/flag-token"})
	if err != nil || s.APITokenFile != "/run/flag-token" {
		t.Fatalf("flag: %+v %v", s, err)
	}
	s, err = load(t, nil, "LIVEGATE_AGENT_API_TOKEN_FILE=/run/env-token")
	if err != nil || s.APITokenFile != "/run/env-token" {
		t.Fatalf("environment: %v", err)
	}
	cfg := filepath.Join(t.TempDir(), "agent.toml")
	if err := os.WriteFile(cfg, []byte("api-token-file = \"/run/toml-token\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = load(t, []string{"--config=" + cfg})
	if err != nil || s.APITokenFile != "/run/toml-token" {
		t.Fatalf("TOML: %v", err)
	}
}

func TestAppAddrNonLoopbackNeedsOverride(t *testing.T) {
	_, err := load(t, []string{"--app-addr=0.0.0.0:8012"})
	if err == nil || !strings.Contains(err.Error(), "app-addr-allow-nonloopback") {
		t.Fatalf("non-loopback without override: %v", err)
	}
	s, err := load(t, []string{"--app-addr=0.0.0.0:8012", "--app-addr-allow-nonloopback"})
	if err != nil || s.AppAddr != "0.0.0.0:8012" {
		t.Fatalf("with override: %v", err)
	}
	s, err = load(t, nil, "LIVEGATE_AGENT_APP_ADDR=192.0.2.1:8012", "LIVEGATE_AGENT_APP_ADDR_ALLOW_NONLOOPBACK=true")
	if err != nil || !s.AppAddrAllowNonLoopback {
		t.Fatalf("override from the environment: %v", err)
	}
	if _, err := load(t, []string{"--app-addr=nonsense", "--app-addr-allow-nonloopback"}); err == nil {
		t.Fatal("override accepted a malformed address")
	}
}
