package main

import (
	"os"
	"strings"
	"testing"

	"github.com/livegate/livegate/agent/internal/appapi"
	"github.com/livegate/livegate/agent/internal/settings"
)

// TestDocsCoverEverything keeps docs/agent.md in step with the settings and the endpoints.
func TestDocsCoverEverything(t *testing.T) {
	b, err := os.ReadFile("../../../docs/agent.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, name := range settings.Names() {
		env := settings.EnvPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
		for _, want := range []string{"`--" + name, env} {
			if !strings.Contains(doc, want) {
				t.Errorf("docs/agent.md does not mention %s", want)
			}
		}
	}
	for _, want := range []string{
		"--/exts/omni.services.livestream.session/quitOnSessionEnded", "--/exts/omni.services.livestream.session/resumeTimeoutSeconds",
		"--/exts/omni.services.livestream.session/waitForSessionReadyEvent", "--/exts/omni.services.transport.server.http/port",
		"POST /v1/streaming/creds", "POST /v1/streaming/endsession", "GET /v1/streaming/ready", "GET /v1/streaming/startup",
		"GET /v1/streaming/session", "GET /metrics", "GET /v1/openapi.json", "GET /v1/app/creds", "GET /v1/app/events",
		"POST /v1/app/events/", "--app-probe", "--config",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("docs/agent.md does not mention %s", want)
		}
	}
	for name := range appapi.Events {
		if !strings.Contains(doc, name) {
			t.Errorf("docs/agent.md does not mention app event %s", name)
		}
	}
}
