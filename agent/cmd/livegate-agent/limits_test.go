package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livegate/livegate/agent/internal/httpserver"
)

// TestSlowClientDoesNotHoldSIGTERM: a client trickling a request body holds the agent's exit for
// about a second, not for the whole --shutdown-timeout.
func TestSlowClientDoesNotHoldSIGTERM(t *testing.T) {
	a := startAgent(t, nil, "--instance-id=lgl-slow", "--shutdown-timeout=60s")
	conn, err := net.Dial("tcp", strings.TrimPrefix(a.rest, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/streaming/creds HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"stunIp\":")
	// An answer on a connection opened later shows the agent serves; the slow one was accepted first.
	if code, _ := a.call("GET", a.rest+"/v1/streaming/startup", ""); code != 200 {
		t.Fatalf("startup: %d", code)
	}
	start := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := a.waitExit(30 * time.Second); err != nil {
		t.Fatalf("agent exited with %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("exit took %s with a slow client open (drain %s, shutdown timeout 60s)", took, httpserver.DrainTimeout)
	}
}

// TestConnectionLimit: however many connections a client opens, the agent holds at most
// httpserver.MaxConns of them per listener, so a flood cannot take all its file descriptors.
func TestConnectionLimit(t *testing.T) {
	a := startAgent(t, nil, "--instance-id=lgl-conns")
	const opened = httpserver.MaxConns + 40
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range opened {
		c, err := net.Dial("tcp", strings.TrimPrefix(a.rest, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// The first connection is answered, so the agent has been accepting all along.
	fmt.Fprintf(conns[0], "GET /v1/streaming/startup HTTP/1.1\r\nHost: agent\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conns[0]), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for range 10 {
		if n := sockets(t, a.cmd.Process.Pid); n > httpserver.MaxConns+8 {
			t.Fatalf("the agent holds %d sockets with %d connections open; the limit is %d", n, opened, httpserver.MaxConns)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func sockets(t *testing.T, pid int) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink(dir + "/" + fd.Name()); err == nil && strings.HasPrefix(target, "socket:") {
			n++
		}
	}
	return n
}
