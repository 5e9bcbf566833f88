package settings

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func write(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const kitFile = `
[package]
title = "My App"
version = "1.0.0"

[dependencies]
"omni.kit.livestream.webrtc" = {}

[settings]
app.window.width = 1280
exts."omni.kit.livestream.webrtc".port = 49100
exts."omni.services.livestream.session".quitOnSessionEnded = false
exts."omni.services.livestream.session".resumeTimeoutSeconds = 12
exts."omni.services.livestream.session".waitForSessionReadyEvent = true
exts."omni.services.transport.server.http".port = 9011
`

func load(t *testing.T, args []string, env ...string) (*Settings, error) {
	t.Helper()
	return Load(args, env, io.Discard)
}

func TestDefaults(t *testing.T) {
	s, err := load(t, []string{"--instance-id", "i1"})
	if err != nil {
		t.Fatal(err)
	}
	if !s.QuitOnSessionEnded || s.ResumeTimeoutSeconds != 30 || s.WaitForSessionReadyEvent || s.Port != 8011 ||
		s.AppAddr != "127.0.0.1:8012" || s.Pool != "default" || s.LeaseTTL != 15*time.Second || s.Action.Kind != ActionExit {
		t.Errorf("defaults: %+v", s)
	}
}

func TestKitFileIsReadAsItIs(t *testing.T) {
	s, err := load(t, []string{"--config", write(t, "app.kit", kitFile), "--instance-id", "i1"})
	if err != nil {
		t.Fatal(err)
	}
	if s.QuitOnSessionEnded || s.ResumeTimeoutSeconds != 12 || !s.WaitForSessionReadyEvent || s.Port != 9011 {
		t.Errorf("kit settings not applied: %+v", s)
	}
}

func TestKitTableForm(t *testing.T) {
	body := "[settings.exts.\"omni.services.livestream.session\"]\nresumeTimeoutSeconds = 7\n"
	s, err := load(t, []string{"--config", write(t, "app.kit", body), "--instance-id", "i1"})
	if err != nil {
		t.Fatal(err)
	}
	if s.ResumeTimeoutSeconds != 7 {
		t.Errorf("resume = %d", s.ResumeTimeoutSeconds)
	}
}

func TestPrecedence(t *testing.T) {
	cfg := write(t, "agent.toml", "port = 1001\nresume-timeout-seconds = 1\npool = \"from-file\"\nmedia-backend = [\"10.0.0.1:30001\", \"10.0.0.1:30002\"]\n")
	env := []string{"LIVEGATE_AGENT_PORT=1002", "LIVEGATE_AGENT_RESUME_TIMEOUT_SECONDS=2", "OTHER=1"}
	s, err := load(t, []string{"--config", cfg, "--instance-id", "i1", "--resume-timeout-seconds", "3",
		"--/exts/omni.services.livestream.session/resumeTimeoutSeconds=4"}, env...)
	if err != nil {
		t.Fatal(err)
	}
	if s.Port != 1002 {
		t.Errorf("port = %d, want env 1002 over file", s.Port)
	}
	if s.ResumeTimeoutSeconds != 4 {
		t.Errorf("resume = %d, want Kit flag 4 over native flag", s.ResumeTimeoutSeconds)
	}
	if s.Pool != "from-file" || len(s.MediaBackends) != 2 {
		t.Errorf("file values lost: %+v", s)
	}
	if got := s.Sources["resume-timeout-seconds"]; got != "flag --/exts/omni.services.livestream.session/resumeTimeoutSeconds" {
		t.Errorf("source = %q", got)
	}
}

func TestKitFlags(t *testing.T) {
	s, err := load(t, []string{"--instance-id=i1",
		"--/exts/omni.services.livestream.session/quitOnSessionEnded=false",
		"--/exts/omni.services.livestream.session/waitForSessionReadyEvent=true",
		"--/exts/omni.services.transport.server.http/port=9999"})
	if err != nil {
		t.Fatal(err)
	}
	if s.QuitOnSessionEnded || !s.WaitForSessionReadyEvent || s.Port != 9999 {
		t.Errorf("kit flags: %+v", s)
	}
}

func TestListsAndBackends(t *testing.T) {
	s, err := load(t, []string{"--instance-id=i1", "--nats-url=nats://127.0.0.1:1", "--signaling-backend=10.1.2.3:30000",
		"--media-backend=10.1.2.3:30001", "--media-backend=10.1.2.3:30002,:30003", "--backend-ip=10.9.9.9"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.1.2.3:30001", "10.1.2.3:30002", "10.9.9.9:30003"}
	if strings.Join(s.MediaBackends, " ") != strings.Join(want, " ") {
		t.Errorf("media = %v, want %v", s.MediaBackends, want)
	}
	s, err = load(t, []string{"--instance-id=i1", "--nats-url=nats://x", "--backend-ip=10.9.9.9"}, "LIVEGATE_AGENT_MEDIA_BACKEND=:30001,:30002")
	if err != nil {
		t.Fatal(err)
	}
	if s.SignalingBackend != "10.9.9.9:49100" || len(s.MediaBackends) != 2 {
		t.Errorf("defaults filled: %s %v", s.SignalingBackend, s.MediaBackends)
	}
}

func TestActions(t *testing.T) {
	tests := []struct {
		in   string
		want Action
	}{
		{"exit", Action{Kind: ActionExit}},
		{"signal:/run/app.pid:SIGTERM", Action{Kind: ActionSignal, PIDFile: "/run/app.pid", Signal: syscall.SIGTERM}},
		{"signal:/run/app.pid:usr1", Action{Kind: ActionSignal, PIDFile: "/run/app.pid", Signal: syscall.SIGUSR1}},
		{"signal:/run/a:b.pid:9", Action{Kind: ActionSignal, PIDFile: "/run/a:b.pid", Signal: syscall.SIGKILL}},
		{"exec:systemctl restart app", Action{Kind: ActionExec, Command: "systemctl restart app"}},
	}
	for _, tt := range tests {
		got, err := ParseAction(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseAction(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "quit", "signal:", "signal:/run/app.pid", "signal::TERM", "signal:/p:NOPE", "exec:", "exec:  "} {
		if _, err := ParseAction(bad); err == nil {
			t.Errorf("ParseAction(%q) accepted", bad)
		}
	}
}

// TestErrorsNameSettingAndSource checks that every refusal says which setting and where from.
func TestErrorsNameSettingAndSource(t *testing.T) {
	kitBad := write(t, "bad.kit", "[settings]\nexts.\"omni.services.livestream.session\".resumeTimeoutSecs = 3\n")
	kitType := write(t, "type.kit", "[settings]\nexts.\"omni.services.livestream.session\".resumeTimeoutSeconds = \"30\"\n")
	tomlBad := write(t, "agent.toml", "prot = 1\n")
	tomlSyntax := write(t, "syntax.toml", "port = \n")
	tests := []struct {
		args []string
		env  []string
		want []string
	}{
		{[]string{"--port=70000"}, nil, []string{"flag --port", "70000"}},
		{[]string{"--port=abc"}, nil, []string{"flag --port", "want an integer"}},
		{[]string{"--quit-on-session-ended=maybe"}, nil, []string{"flag --quit-on-session-ended", "true or false"}},
		{[]string{"--nope"}, nil, []string{"command line", "nope"}},
		{[]string{"stray"}, nil, []string{"unexpected argument", "stray"}},
		{[]string{"--/exts/omni.services.livestream.session/resumeTimeoutSecs=3"}, nil, []string{"flag --/exts/omni.services.livestream.session/resumeTimeoutSecs", "unknown setting"}},
		{[]string{"--/exts/omni.services.livestream.session/resumeTimeoutSeconds"}, nil, []string{"resumeTimeoutSeconds", "=value"}},
		{[]string{"--/exts/omni.services.livestream.session/resumeTimeoutSeconds=-1"}, nil, []string{"flag --/exts/omni.services.livestream.session/resumeTimeoutSeconds", "-1"}},
		{nil, []string{"LIVEGATE_AGENT_PROT=1"}, []string{"environment", "LIVEGATE_AGENT_PROT", "unknown setting"}},
		{nil, []string{"LIVEGATE_AGENT_LEASE_TTL=soon"}, []string{"environment LIVEGATE_AGENT_LEASE_TTL", "duration"}},
		{[]string{"--config", kitBad}, nil, []string{kitBad, `settings.exts."omni.services.livestream.session".resumeTimeoutSecs`, "unknown setting"}},
		{[]string{"--config", kitType}, nil, []string{kitType, "resumeTimeoutSeconds", "want an integer"}},
		{[]string{"--config", tomlBad}, nil, []string{tomlBad, "prot", "unknown setting"}},
		{[]string{"--config", tomlSyntax}, nil, []string{tomlSyntax}},
		{[]string{"--config", "/nonexistent/agent.toml"}, nil, []string{"/nonexistent/agent.toml"}},
		{[]string{"--app-addr=0.0.0.0:8012"}, nil, []string{"flag --app-addr", "loopback"}},
		{[]string{"--instance-id=a.b"}, nil, []string{"flag --instance-id", "instance id"}},
		{[]string{"--pool=x y"}, nil, []string{"flag --pool"}},
		{[]string{"--session-id=bad id"}, nil, []string{"flag --session-id", "session id"}},
		{[]string{"--on-session-ended=reboot"}, nil, []string{"flag --on-session-ended", "reboot"}},
		{[]string{"--lease-ttl=100ms"}, nil, []string{"flag --lease-ttl", "1s"}},
		{[]string{"--nats-url=nats://x", "--signaling-backend=nohost"}, nil, []string{"flag --signaling-backend", "ip:port"}},
		{[]string{"--nats-url=nats://x", "--media-backend=10.0.0.1:0"}, nil, []string{"flag --media-backend", "ip:port"}},
		// The Kit-style keys and flags say which there are, not that the keys are flag names.
		{[]string{"--config", kitBad}, nil, []string{`unknown setting (the keys of settings.exts."omni.services.livestream.session" are quitOnSessionEnded, resumeTimeoutSeconds, waitForSessionReadyEvent)`}},
		{[]string{"--/app/window/title=x"}, nil, []string{"flag --/app/window/title: unknown setting (the Kit-style flags are --/exts/omni.services.livestream.session/quitOnSessionEnded, --/exts/omni.services.livestream.session/resumeTimeoutSeconds, --/exts/omni.services.livestream.session/waitForSessionReadyEvent, --/exts/omni.services.transport.server.http/port)"}},
		{[]string{"--config", tomlBad}, nil, []string{"prot: unknown setting (the keys are the flag names; -h lists them)"}},
		{nil, []string{"LIVEGATE_AGENT_VERSION=1"}, []string{"environment LIVEGATE_AGENT_VERSION: --version is set on the command line only"}},
		// The NATS settings are checked as the edge checks them, before anything connects.
		{[]string{"--nats-url=nats://x", "--nats-creds=/c", "--nats-nkey=/n"}, nil, []string{"flag --nats-nkey: set either --nats-creds or --nats-nkey, not both"}},
		{[]string{"--nats-url=nats://x"}, []string{"LIVEGATE_AGENT_NATS_TLS_CERT=/c"}, []string{"environment LIVEGATE_AGENT_NATS_TLS_CERT: a TLS client certificate needs both"}},
		{[]string{"--nats-url=nats://x", "--nats-replicas=0"}, nil, []string{"flag --nats-replicas: value 0: want 1 to 5"}},
		// Every refusal at once, one a line.
		{[]string{"--port=0", "--pool=a b"}, []string{"LIVEGATE_AGENT_LEASE_TTL=1ms"}, []string{"flag --port: 0 is not a port", "\nflag --pool: pool", "\nenvironment LIVEGATE_AGENT_LEASE_TTL: 1ms is not from 1s to 1h"}},
		// A default another setting made wrong names the default.
		{[]string{"--nats-url=nats://x", "--backend-ip=10.0.0.1", "--media-backend="}, nil, []string{"flag --media-backend: at least one media backend is needed"}},
	}
	for _, tt := range tests {
		args := append([]string{"--instance-id=i1"}, tt.args...)
		_, err := load(t, args, tt.env...)
		if err == nil {
			t.Errorf("%v %v: accepted", tt.args, tt.env)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v %v: error %q does not mention %q", tt.args, tt.env, err, w)
			}
		}
	}
}

// TestSecretsNeverEchoed: a NATS URL, which may carry a password, is not repeated by any refusal.
func TestSecretsNeverEchoed(t *testing.T) {
	const url = "nats://user:hunter2@%zz:4222"
	for _, tt := range []struct {
		args []string
		env  []string
	}{
		{args: []string{"--nats-url=" + url}},
		{env: []string{"LIVEGATE_AGENT_NATS_URL=" + url}},
		{args: []string{"--config", write(t, "agent.toml", "nats-url = [\""+url+"\", 1]\n")}},
		{args: []string{"--config", write(t, "agent.toml", "nats-url = 1234\n")}},
	} {
		_, err := load(t, append([]string{"--instance-id=i1"}, tt.args...), tt.env...)
		if err == nil || strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "1234") {
			t.Errorf("%v %v: %v; want a refusal that does not repeat the URL", tt.args, tt.env, err)
		}
	}
}

func TestHelp(t *testing.T) {
	var b strings.Builder
	if _, err := Load([]string{"--help"}, nil, &b); err != ErrHelp {
		t.Fatalf("err = %v", err)
	}
	for _, n := range Names() {
		if !strings.Contains(b.String(), "-"+n) {
			t.Errorf("help lacks %s", n)
		}
	}
}
