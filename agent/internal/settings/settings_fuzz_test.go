package settings

import (
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/sessionid"
)

// defaultSource starts the refusal of a default, which another setting made wrong.
var defaultSource = regexp.MustCompile(`^--[a-z-]+ \(default\): `)

// checkLoaded holds the properties of every Load: each line of a refusal starts with where
// the bad setting came from (one of sources), and accepted settings are all within their ranges.
func checkLoaded(t *testing.T, what string, s *Settings, err error, sources ...string) {
	t.Helper()
	if errors.Is(err, ErrHelp) {
		return
	}
	if err != nil {
		for _, msg := range strings.Split(err.Error(), "\n") {
			ok := defaultSource.MatchString(msg)
			for _, src := range sources {
				ok = ok || strings.HasPrefix(msg, src)
			}
			if !ok || len(msg) < 4 {
				t.Fatalf("%s: refusal line %q does not start with where the setting came from (%q)", what, msg, sources)
			}
		}
		return
	}
	switch {
	case s.Port < 1 || s.Port > 65535:
		t.Fatalf("%s: accepted port %d", what, s.Port)
	case s.ResumeTimeoutSeconds < 0 || s.ResumeTimeoutSeconds > 86400:
		t.Fatalf("%s: accepted resume timeout %d", what, s.ResumeTimeoutSeconds)
	case s.LeaseTTL < time.Second || s.LeaseTTL > time.Hour || s.ShutdownTimeout <= 0:
		t.Fatalf("%s: accepted lease %s, shutdown timeout %s", what, s.LeaseTTL, s.ShutdownTimeout)
	case events.ValidateToken("", s.InstanceID) != nil || events.ValidateToken("", s.Pool) != nil:
		t.Fatalf("%s: accepted instance id %q, pool %q", what, s.InstanceID, s.Pool)
	case s.EdgeID != "" && events.ValidateToken("", s.EdgeID) != nil:
		t.Fatalf("%s: accepted edge id %q", what, s.EdgeID)
	case s.SessionID != "" && sessionid.Validate(s.SessionID) != nil:
		t.Fatalf("%s: accepted session id %q", what, s.SessionID)
	}
	if s.Host != "" {
		if _, err := netip.ParseAddr(s.Host); err != nil {
			t.Fatalf("%s: accepted host %q", what, s.Host)
		}
	}
	ap, err := hostPort(s.AppAddr)
	if err != nil || (!s.AppAddrAllowNonLoopback && !ap.Addr().IsLoopback()) {
		t.Fatalf("%s: accepted app address %q", what, s.AppAddr)
	}
	if s.NATS.URL == "" {
		return
	}
	if len(s.MediaBackends) == 0 {
		t.Fatalf("%s: accepted no media backend", what)
	}
	for _, b := range append([]string{s.SignalingBackend}, s.MediaBackends...) {
		ap, err := netip.ParseAddrPort(b)
		if err != nil || ap.Port() == 0 || ap.String() != b {
			t.Fatalf("%s: accepted backend %q, which would reach the route as is", what, b)
		}
	}
}

// FuzzSettingsTOML loads any text as a --config file, half of the time as a Kit .kit file.
func FuzzSettingsTOML(f *testing.F) {
	for _, s := range []string{
		"port = 8011\nresume-timeout-seconds = 30\ninstance-id = \"i1\"\n",
		"[settings]\nexts.\"omni.services.livestream.session\".resumeTimeoutSeconds = 30\nexts.\"omni.services.transport.server.http\".port = 8011\n",
		"[settings.exts.\"omni.services.livestream.session\"]\nquitOnSessionEnded = \"yes\"\n",
		"nats-url = \"nats://127.0.0.1:4222\"\nsignaling-backend = \"10.0.0.1:49100\"\nmedia-backend = [\"10.0.0.1:47998\", \"[fd00::1]:1\"]\n",
		"nats-url = \"x\"\nbackend-ip = \"10.0.0.1\"\nmedia-backend = [\"10.0.0.1:0\"]\n",
		"session-id = \"a\\nset map x y\"\n", "session-id = \"..\"\n", "pool = \"p.>\"\n", "instance-id = \"$(reboot)\"\n",
		"app-addr = \"0.0.0.0:8012\"\n", "port = 65536\n", "port = 0\n", "lease-ttl = 5\n", "on-session-ended = \"signal:/run/app.pid:99\"\n",
		"settings = 1\n", "[settings]\nexts = []\n", "unknown = 1\n", "port = 9223372036854775807\n", "a = [", "",
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	// One directory per fuzzing process, which runs its inputs one at a time: a directory per
	// input would cost more than the load itself.
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content string, kit bool) {
		name := "agent.toml"
		if kit {
			name = "app.kit"
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Load([]string{"--config", path}, nil, io.Discard)
		checkLoaded(t, "config "+strings.ReplaceAll(content, "\n", `\n`), s, err, "config "+path+": ")
	})
}

// FuzzSettingsArgs loads any command line (arguments separated by NUL, which no argument can
// hold): native flags and Kit-style --/exts/... flags. --config is left out so that no run reads
// a file the fuzzer names.
func FuzzSettingsArgs(f *testing.F) {
	for _, s := range []string{
		"--port=8011", "--/exts/omni.services.livestream.session/resumeTimeoutSeconds=30",
		"--/exts/omni.services.transport.server.http/port=65536", "--/exts/omni.services.livestream.session/quitOnSessionEnded",
		"--/exts/other/x=1", "--/exts/omni.services.livestream.session/resumeTimeoutSeconds=-1",
		"--session-id=abc\x00--session-id=a b", "--session-id\x00$(reboot)", "--instance-id=a;b", "--pool=-j ACCEPT",
		"--nats-url=nats://x\x00--backend-ip=10.0.0.1\x00--media-backend=:47998,10.0.0.2:1", "--nats-url=x\x00--signaling-backend=10.0.0.1:0",
		"--nats-url=x\x00--backend-ip=::1\x00--media-backend=[::1]:70000", "--app-addr=[::1]:8012", "--app-addr=10.0.0.1:8012",
		"--on-session-ended=exec:", "--lease-ttl=1h1s", "-h", "stray", "--", "--=x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		var args []string
		for _, a := range strings.Split(line, "\x00") {
			if strings.HasPrefix(strings.TrimLeft(a, "-"), "config") {
				continue
			}
			args = append(args, a)
		}
		s, err := Load(args, nil, io.Discard)
		checkLoaded(t, strings.Join(args, " "), s, err, "command line: ", "flag --", `flag "--`)
	})
}

// FuzzSettingsEnv loads one LIVEGATE_AGENT_* variable of any name and value.
func FuzzSettingsEnv(f *testing.F) {
	for _, kv := range [][2]string{
		{"PORT", "8011"}, {"PORT", "0x1f"}, {"MEDIA_BACKEND", "10.0.0.1:1,,10.0.0.2:2"}, {"SESSION_ID", "a\nb"},
		{"QUIT_ON_SESSION_ENDED", "maybe"}, {"LEASE_TTL", "-1s"}, {"UNKNOWN", "1"}, {"NATS_URL", "nats://x"}, {"HOST", "0.0.0.0"},
	} {
		f.Add(kv[0], kv[1])
	}
	f.Fuzz(func(t *testing.T, name, value string) {
		if name == "CONFIG" || strings.Contains(name, "=") {
			return
		}
		s, err := Load(nil, []string{EnvPrefix + name + "=" + value}, io.Discard)
		checkLoaded(t, EnvPrefix+name+"="+value, s, err, "environment ", "environment: "+EnvPrefix)
	})
}
