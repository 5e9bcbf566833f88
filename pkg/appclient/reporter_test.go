package appclient_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/appclient"
	"github.com/livegate/livegate/pkg/appclient/appclienttest"
	"github.com/rs/zerolog"
)

// runReporter runs a reporter against agent; stop ends it and waits until it has.
func runReporter(t *testing.T, agent *appclienttest.Agent) (r *appclient.Reporter, stop func()) {
	t.Helper()
	srv := httptest.NewServer(agent)
	t.Cleanup(srv.Close)
	r = appclient.NewReporter(strings.TrimPrefix(srv.URL, "http://"), 10*time.Second, zerolog.Nop())
	ctx, cancel := context.WithCancel(t.Context())
	go r.Run(ctx)
	return r, func() {
		cancel()
		<-r.Done()
	}
}

func TestReporterRetriesInOrder(t *testing.T) {
	agent := &appclienttest.Agent{Failures: 2}
	r, stop := runReporter(t, agent)
	r.Notify("app-ready")
	r.Notify("rtx-ready")
	agent.WaitFor(t, "app-ready", "rtx-ready")
	stop()
}

func TestReporterDoesNotRetryRefusals(t *testing.T) {
	agent := &appclienttest.Agent{Status: http.StatusConflict}
	r, stop := runReporter(t, agent)
	r.Notify("client-connected")
	stop()
	if n := agent.Calls(); n != 1 {
		t.Errorf("agent called %d times, want 1 (409 is final)", n)
	}
}

func TestFollowDeliversInOrderAndReconnects(t *testing.T) {
	agent := &appclienttest.Agent{}
	srv := httptest.NewServer(agent)
	agent.Send("endpoint-assigned", `{"sessionId":"s1"}`)
	got := make(chan appclient.Notification, 10)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go appclient.Follow(ctx, strings.TrimPrefix(srv.URL, "http://"), zerolog.Nop(), func(n appclient.Notification) { got <- n })
	next := func() appclient.Notification {
		t.Helper()
		select {
		case n := <-got:
			return n
		case <-time.After(10 * time.Second):
			t.Fatal("no notification")
		}
		return appclient.Notification{}
	}
	if n := next(); n.Event != "endpoint-assigned" || string(n.Data) != `{"sessionId":"s1"}` {
		t.Errorf("first notification %s %s", n.Event, n.Data)
	}
	agent.Send("session-ended", `{"sessionId":"s1","reason":"graceful"}`)
	if n := next(); n.Event != "session-ended" {
		t.Errorf("second notification %s %s", n.Event, n.Data)
	}
	// A dropped stream is opened again, and the agent replays what it sent.
	srv.CloseClientConnections()
	if n := next(); n.Event != "endpoint-assigned" {
		t.Errorf("after reconnect %s %s", n.Event, n.Data)
	}
	cancel()
	srv.Close()
}
