package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/freeport"
)

func TestVersion(t *testing.T) {
	out, err := exec.Command(agentBin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("--version: %v\n%s", err, out)
	}
	if !strings.HasPrefix(string(out), "livegate-agent ") || !strings.Contains(string(out), "go1.") {
		t.Fatalf("--version printed %q", out)
	}
}

// TestHelpNamesEveryEnvironmentVariable: -h lists each flag with the variable that also sets it.
func TestHelpNamesEveryEnvironmentVariable(t *testing.T) {
	out, _ := exec.Command(agentBin, "-h").CombinedOutput()
	for _, want := range []string{"-nats-url", "env LIVEGATE_AGENT_NATS_URL", "-api-token-file", "env LIVEGATE_AGENT_API_TOKEN_FILE", "env LIVEGATE_AGENT_CONFIG", "-version"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("-h lacks %q", want)
		}
	}
}

// TestSIGTERMAnswersTheRequestInFlight: a request whose body is still arriving when SIGTERM comes
// gets its whole answer, then the agent exits 0.
func TestSIGTERMAnswersTheRequestInFlight(t *testing.T) {
	a := startAgent(t, nil, "--instance-id=lga-inflight", "--session-id=s-inflight")
	a.appEvent("app-ready")
	a.appEvent("rtx-ready")

	conn, err := net.Dial("tcp", strings.TrimPrefix(a.rest, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	// Expect: 100-continue makes the agent say when its handler starts reading the body: from then
	// on the request is in flight, and the body is sent only after SIGTERM.
	body := `{"stunIp":"198.18.0.1","stunPort":3478,"username":"u","password":"p"}`
	if _, err := fmt.Fprintf(conn, "POST /v1/streaming/creds HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nX-Request-Id: inflight-1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n", len(body)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	status, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 100") {
		t.Fatalf("want 100 Continue, got %q %v", status, err)
	}
	if blank, err := br.ReadString('\n'); err != nil || blank != "\r\n" {
		t.Fatalf("after 100 Continue: %q %v", blank, err)
	}
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "agent stopping", func() bool { return strings.Contains(a.log.String(), "signal received: stopping") })
	if _, err := io.WriteString(conn, body); err != nil {
		t.Fatalf("send the body after SIGTERM: %v", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer to the request in flight: %v", err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Header.Get("X-Request-Id") != "inflight-1" || !strings.HasPrefix(string(got), `{"success":`) {
		t.Fatalf("answer %d %q (request id %q)", resp.StatusCode, got, resp.Header.Get("X-Request-Id"))
	}
	t.Logf("answered after SIGTERM: %d %s", resp.StatusCode, got)
	if err := a.waitExit(10 * time.Second); err != nil {
		t.Fatalf("agent exited with %v", err)
	}
}

// TestAppProbeSaysItWaits: while --app-probe finds nothing listening, the log says what the agent
// waits for, not only once the app is up.
func TestAppProbeSaysItWaits(t *testing.T) {
	port := freeport.TCP(t)
	a := startAgent(t, nil, "--instance-id=lgo-probe", fmt.Sprintf("--app-probe=127.0.0.1:%d", port))
	eventually(t, 10*time.Second, "the wait is logged", func() bool {
		return strings.Contains(a.log.String(), "waiting for the app to accept connections") &&
			strings.Contains(a.log.String(), fmt.Sprintf(`"app_probe":"127.0.0.1:%d"`, port))
	})
}
