package validate

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// natsServer finds the nats-server binary make deps installs.
func natsServer(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", "nats-server")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatal("nats-server not found on PATH or in $(go env GOPATH)/bin: run make deps")
	return ""
}

// checkNATS has nats-server itself parse a configuration (-t), which rejects unknown fields.
func checkNATS(t *testing.T, file string, env ...string) {
	t.Helper()
	cmd := exec.Command(natsServer(t), "-t", "-c", file)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("nats-server -t -c %s: %v\n%s", file, err, out)
	}
}

func TestNATSConfigs(t *testing.T) {
	dir := filepath.Join(repoRoot, "deploy", "nats")
	checkNATS(t, filepath.Join(dir, "nats-single.conf"))
	checkNATS(t, filepath.Join(dir, "nats-cluster.conf"), "NATS_SERVER_NAME=nats-1")

	cm := decode(t, "nats/configmap.yaml")
	conf, _ := at(cm, "data", "nats.conf").(string)
	file := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	checkNATS(t, file, "POD_NAME=nats-0")

	broken := filepath.Join(t.TempDir(), "broken.conf")
	if err := os.WriteFile(broken, []byte("jetstream { store_dri: /x }\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command(natsServer(t), "-t", "-c", broken).Run(); err == nil {
		t.Error("nats-server accepted an unknown field: the check proves nothing")
	}
}

// TestSystemdUnits runs systemd-analyze verify on each unit, with the binaries it starts replaced
// by stubs (they are not installed here). Any warning fails.
func TestSystemdUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	units, err := filepath.Glob(filepath.Join(repoRoot, "deploy", "systemd", "*.service"))
	if err != nil || len(units) == 0 {
		t.Fatalf("no units: %v", err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"livegate-agent", "livegate-edgeproxy", "nats-server"} {
		if err := os.WriteFile(filepath.Join(bin, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		copyPath := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(copyPath, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/", bin+"/")), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(analyze, "verify", "--man=no", copyPath).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", filepath.Base(u), err, out)
		}
	}
}
