package natsconn

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/freeport"
	"github.com/livegate/livegate/pkg/natstest"
	"github.com/livegate/livegate/pkg/poll"
	"github.com/rs/zerolog"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"ok", Config{URLs: []string{"nats://127.0.0.1:4222"}}, ""},
		{"creds and nkey", Config{CredsFile: "a", NKeyFile: "b"}, "not both"},
		{"cert without key", Config{TLSCertFile: "a"}, "both the certificate and the key"},
		{"empty url", Config{URLs: []string{" "}}, "empty server URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Validate = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestPingInterval(t *testing.T) {
	tests := []struct {
		staleAfter, want time.Duration
	}{
		{0, 10 * time.Second},
		{5 * time.Second, 5 * time.Second / 3},
		{time.Second, time.Second / 3},
		{10 * time.Millisecond, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := pingInterval(tt.staleAfter); got != tt.want {
			t.Errorf("pingInterval(%s) = %s, want %s", tt.staleAfter, got, tt.want)
		}
	}
}

func TestRedact(t *testing.T) {
	got := redact([]string{"nats://user:secret@10.0.0.1:4222", "nats://127.0.0.1:4222"})
	if strings.Contains(got, "secret") || !strings.Contains(got, "[redacted]@10.0.0.1:4222") {
		t.Fatalf("redact = %q", got)
	}
}

func TestMissingNKeyFile(t *testing.T) {
	_, err := Connect(context.Background(), Config{NKeyFile: "/nonexistent/seed"}, zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/seed") {
		t.Fatalf("Connect = %v", err)
	}
}

func TestReconnectsAndLogsReason(t *testing.T) {
	srv := natstest.External(t)
	var logs bytes.Buffer
	nc, err := Connect(context.Background(), Config{URLs: []string{srv.URL()}, Name: "test"}, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	waitConnected(t, nc.IsConnected)
	reconnects := Reconnects(nc)
	srv.Stop()
	srv.Start()
	waitConnected(t, nc.IsConnected)
	select {
	case <-reconnects:
	case <-time.After(10 * time.Second):
		t.Fatal("Reconnects did not fire")
	}
	if !strings.Contains(logs.String(), "nats disconnected") || !strings.Contains(logs.String(), `"reason"`) {
		t.Fatalf("no disconnect reason logged: %s", logs.String())
	}
}

// A process may start before its broker: Connect succeeds and the connection comes up later.
func TestStartsBeforeServer(t *testing.T) {
	port := freeport.TCP(t)
	nc, err := Connect(context.Background(), Config{URLs: []string{fmt.Sprintf("nats://127.0.0.1:%d", port)}}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if nc.IsConnected() {
		t.Fatal("connected with no server")
	}
}

func waitConnected(t *testing.T, ok func() bool) {
	t.Helper()
	poll.Until(t, 20*time.Second, 50*time.Millisecond, "connected", ok)
}

// TestInboxPrefix: the replies a client asks for arrive under its own prefix.
func TestInboxPrefix(t *testing.T) {
	port := freeport.TCP(t)
	nc, err := Connect(context.Background(), Config{URLs: []string{fmt.Sprintf("nats://127.0.0.1:%d", port)}, InboxPrefix: "_INBOX.app-1"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if inbox := nc.NewInbox(); !strings.HasPrefix(inbox, "_INBOX.app-1.") {
		t.Errorf("inbox %q, want it under _INBOX.app-1", inbox)
	}
	if _, err := Connect(context.Background(), Config{InboxPrefix: "_INBOX.>"}, zerolog.Nop()); err == nil {
		t.Error("a wildcard prefix was taken")
	}
}
