package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/livegate/livegate/edgeproxy/internal/probe/probetest"
)

func runProbe(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := ProbeCommand(t.Context(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestProbePasses(t *testing.T) {
	s, url := probetest.StartSignaling(t, true)
	media1, media2 := probetest.StartResponder(t), probetest.StartResponder(t)
	code, out, errOut := runProbe(t, "--signaling", url, "--session-id", "sess-42", "--insecure",
		"--media", media1, "--media", media2, "--count", "40", "--rate", "400")
	t.Logf("stdout:\n%s", out)
	if code != probeOK {
		t.Fatalf("exit %d, stderr: %s", code, errOut)
	}
	for _, want := range []string{"101 Switching Protocols", "x-nv-sessionid.sess-42 echoed",
		"media " + strings.TrimPrefix(media1, "udp://"), "media " + strings.TrimPrefix(media2, "udp://"),
		"sent 40, echoed 40", "all 3 checks passed"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	if n := s.Seen().Accepted; n != 1 {
		t.Errorf("signaling server accepted %d websockets, want 1", n)
	}
}

func TestProbeMediaOnlyAndSignalingOnly(t *testing.T) {
	if code, _, errOut := runProbe(t, "--media", probetest.StartResponder(t), "--count", "20", "--rate", "400"); code != probeOK {
		t.Errorf("media only: exit %d, stderr: %s", code, errOut)
	}
	_, url := probetest.StartSignaling(t, true)
	if code, _, errOut := runProbe(t, "--signaling", url, "--session-id", "s", "--insecure"); code != probeOK {
		t.Errorf("signaling only: exit %d, stderr: %s", code, errOut)
	}
}

func TestProbeFails(t *testing.T) {
	_, silentURL := probetest.StartSignaling(t, false)
	runProbeCases(t, probeFailed, []probeCase{
		{"closed media port", []string{"--media", probetest.ClosedUDPPort(t), "--timeout", "2s"}, "FAIL media"},
		{"subprotocol not echoed", []string{"--signaling", silentURL, "--session-id", "s", "--insecure"}, "did not echo"},
		{"untrusted certificate", []string{"--signaling", silentURL, "--session-id", "s"}, "needs --insecure"},
	}, func(t *testing.T, want, out, errOut string) {
		if !strings.Contains(out, want) {
			t.Errorf("stdout %q lacks %q", out, want)
		}
		if !strings.Contains(errOut, "1 of 1 checks failed") {
			t.Errorf("stderr %q lacks the summary", errOut)
		}
	})
}

// probeCase is a probe command line and what its output must hold.
type probeCase struct {
	name string
	args []string
	want string
}

// runProbeCases runs each case's probe as a subtest, wants exit code, and checks its output.
func runProbeCases(t *testing.T, code int, cases []probeCase, check func(t *testing.T, want, out, errOut string)) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, out, errOut := runProbe(t, tc.args...)
			if got != code {
				t.Errorf("exit %d, want %d", got, code)
			}
			check(t, tc.want, out, errOut)
		})
	}
}

func TestProbeUsageErrors(t *testing.T) {
	runProbeCases(t, probeUsage, []probeCase{
		{"nothing to probe", nil, "nothing to probe"},
		{"signaling without session", []string{"--signaling", "wss://h:48322/sign_in"}, "--session-id"},
		{"bad session id", []string{"--signaling", "wss://h:48322/sign_in", "--session-id", "a/b"}, "--session-id"},
		{"bad signaling scheme", []string{"--signaling", "http://h/sign_in", "--session-id", "s"}, "scheme"},
		{"bad media", []string{"--media", "10.0.0.1:5000"}, "udp://HOST:PORT"},
		{"bad media port", []string{"--media", "udp://h:0"}, "port"},
		{"bad count", []string{"--media", "udp://h:1", "--count", "0"}, "--count"},
		{"bad loss", []string{"--media", "udp://h:1", "--max-loss", "2"}, "--max-loss"},
		{"unknown flag", []string{"--bogus"}, "bogus"},
		{"stray argument", []string{"--media", "udp://h:1", "extra"}, "extra"},
		// A refused flag is one line, as in every command, with a pointer to -h.
		{"count not a number", []string{"--count", "x"}, "livegate-edgeproxy probe: flag --count: value \"x\": want an integer\n(`livegate-edgeproxy probe -h` lists the flags)\n"},
	}, func(t *testing.T, want, _, errOut string) {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr %q lacks %q", errOut, want)
		}
	})
}

func TestProbeHelp(t *testing.T) {
	code, _, errOut := runProbe(t, "-h")
	if code != probeOK || !strings.Contains(errOut, "usage: livegate-edgeproxy probe") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}
