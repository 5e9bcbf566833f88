package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/freeport"
)

// TestAPITokenWithTheBinary: the token file read at start guards the REST API, leaves the probes
// open, and never shows up in the log or in an answer.
func TestAPITokenWithTheBinary(t *testing.T) {
	const token = "lgs-binary-token-0123456789"
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, []string{"LIVEGATE_AGENT_API_TOKEN_FILE=" + file}, "--instance-id=lgs-tok", "--log-level=debug")
	a.expect("GET", "/v1/streaming/ready", "", 503, `{"statusMessage":"Status: App not ready"}`)
	a.expect("GET", "/v1/streaming/session", "", 401, `{"detail":"Not authenticated"}`)
	a.expect("POST", "/v1/streaming/creds", `{"stunIp":"1.2.3.4","stunPort":3478,"username":"u","password":"p"}`, 401, `{"detail":"Not authenticated"}`)
	req, _ := http.NewRequest("GET", a.rest+"/v1/streaming/session", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("session with the token: %d", resp.StatusCode)
	}
	code, metrics := a.call("GET", a.rest+"/metrics", "")
	if code != 200 || strings.Contains(metrics, token) {
		t.Fatalf("metrics: %d, token shown: %v", code, strings.Contains(metrics, token))
	}
	if strings.Contains(a.log.String(), token) {
		t.Fatal("the token is in the log")
	}
}

func TestAPITokenFileProblemsStopStartUp(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{empty, filepath.Join(dir, "missing")} {
		out, err := exec.Command(agentBin, "--instance-id=lgs-bad", "--host=127.0.0.1", fmt.Sprintf("--port=%d", freeport.TCP(t)), "--api-token-file="+file).CombinedOutput()
		if err == nil || !strings.Contains(string(out), file) {
			t.Errorf("token file %s: %v, output %q does not name it", file, err, out)
		}
	}
}

// TestNonLoopbackAppAddrWarns: the explicit override is accepted and logged as a warning.
func TestNonLoopbackAppAddrWarns(t *testing.T) {
	port := freeport.TCP(t)
	a := startAgent(t, nil, "--instance-id=lgs-app", fmt.Sprintf("--app-addr=0.0.0.0:%d", port), "--app-addr-allow-nonloopback")
	eventually(t, 5*time.Second, "the warning is logged", func() bool {
		l := a.log.String()
		return strings.Contains(l, `"level":"warn"`) && strings.Contains(l, "beyond loopback") &&
			// Go reports a listener on 0.0.0.0 as [::].
			strings.Contains(l, fmt.Sprintf(`"app_api":"[::]:%d"`, port))
	})
}

// TestWorldReadableTokenFileWarns: a token any user can read still works, with a warning that
// names the file and says how to fix it; a private one logs no warning.
func TestWorldReadableTokenFileWarns(t *testing.T) {
	for mode, warn := range map[os.FileMode]bool{0o644: true, 0o600: false, 0o640: false} {
		file := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(file, []byte("lgs-mode-token-0123456789\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(file, mode); err != nil {
			t.Fatal(err)
		}
		a := startAgent(t, nil, "--instance-id=lgs-mode", "--api-token-file="+file)
		lines, err := a.log.Lines()
		if err != nil {
			t.Fatal(err)
		}
		warned := false
		for _, l := range lines {
			if l["level"] == "warn" && strings.Contains(fmt.Sprint(l["error"]), file) && strings.Contains(fmt.Sprint(l["error"]), "chmod o-rwx") {
				warned = true
			}
		}
		if warned != warn {
			t.Errorf("mode %04o: warned %v, want %v; log:\n%s", mode, warned, warn, a.log.String())
		}
	}
}
