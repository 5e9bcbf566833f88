package cli

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/pkg/events"
)

// settingRefusal is how each line of a refused edge configuration starts: where the value at
// fault came from (a flag, a variable, a key of the file, or a default another setting made
// wrong), or the command line or file as a whole; only a missing certificate has no source.
var settingRefusal = regexp.MustCompile(`^(flag --[a-z-]+: |environment "?LIVEGATE_EDGEPROXY_.*: |environment: |--[a-z-]+ \(default\): |command line: |config /[^:]*: |the signaling frontend needs )`)

// hostText is all an accepted --public-host may hold: it is published in livegate_endpoints and
// ends up in the browser's wss:// URL and in the self-signed certificate as it is.
var hostText = regexp.MustCompile(`^[A-Za-z0-9.:-]+$`)

// FuzzEdgeSettings loads the edge's settings as `livegate-edgeproxy run` does: any --config
// TOML file (keyed by flag names), any command line (arguments separated by NUL) and one
// LIVEGATE_EDGEPROXY_* variable. A refusal names, on each of its lines, where the value at fault
// came from, so no value it repeats can start a line of its own. Accepted settings have valid ids, a plain public
// host, and render an HAProxy configuration in which the socket, map, certificate and bind
// address each stay one word in their own place: rendering with placeholders and substituting
// the values gives the same text, so no value can add a line or a directive.
func FuzzEdgeSettings(f *testing.F) {
	const base = "tls-self-signed = true\nstate-dir = \"/var/lib/livegate\"\npublic-ip = \"198.18.1.1\"\npublic-host = \"edge-1.example.com\"\n"
	for _, s := range [][4]string{
		{base, "", "", ""},
		{base + "pool = \"p1\"\nedge-id = \"edge-a\"\nbackend-cidrs = [\"10.0.0.0/8\", \"fd00::/8\"]\nresync = \"45s\"\nmax-routes = 500\nsnat = false\n", "--media=off", "POOL", "from-env"},
		{base, "--haproxy-socket=/run/haproxy/admin.sock\x00--haproxy-map=/etc/haproxy/livegate.map", "SIGNALING_BIND", "::"},
		{base, "--state-dir=/var/lib/x\n  stats socket /tmp/evil level admin", "", ""},
		{base + "haproxy-map = \"/m.map if TRUE\\nbackend evil\"\n", "", "", ""},
		{base, "--haproxy-socket=/run/a.sock;show info", "HAPROXY_MAP", "/m#x"},
		{base, "--public-host=edge.example/x?y=", "", ""},
		{base, "--public-host=a b", "PUBLIC_HOST", "edge\r\nX: y"},
		{base, "--edge-id=a.b\x00--pool=p>", "", ""},
		{base, "--signaling-bind=0.0.0.0 ssl crt /etc/shadow", "", ""},
		{base, "--tls-cert=/c.pem\x00--tls-key=/k.pem\x00--tls-self-signed=false", "", ""},
		{base, "--backend-cidrs=0.0.0.0/0\x00--backend-ports=1-65535", "", ""},
		{base, "--backend-ports=0-70000", "BACKEND_CIDRS", "10.0.0.0/8,x"},
		{base, "--signaling-port=0\x00--miss-limit=0\x00--tunnel-timeout=1ms", "", ""},
		{base + "max-routes = \"many\"\n", "", "RESYNC", "soon"},
		{"[pool]\nname = 1\n", "", "", ""}, {"a = [", "", "", ""}, {"config = \"/etc/passwd\"\n", "", "", ""},
		{base, "-h", "", ""}, {base, "stray", "", ""}, {base, "--nope", "", ""}, {base, "--nats-embedded=x", "", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, file, line, envName, envValue string) {
		path := filepath.Join(dir, "edge.toml")
		if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
		args := []string{"--config", path}
		for _, a := range strings.Split(line, "\x00") {
			// The file is the fuzzer's own, never one it names.
			if a != "" && !strings.HasPrefix(strings.TrimLeft(a, "-"), configFlag) {
				args = append(args, a)
			}
		}
		var environ []string
		if envName != "" && envName != "CONFIG" {
			environ = []string{EnvPrefix + envName + "=" + envValue}
		}
		fs, fl := newFlagSet("run", &bytes.Buffer{}, nil)
		err := loadFlags(fs, fl, args, environ)
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		if err == nil {
			var s *settings
			if s, err = fl.settings(nil); err == nil {
				checkEdgeSettings(t, s)
				return
			}
		}
		for _, l := range strings.Split(err.Error(), "\n") {
			if !settingRefusal.MatchString(l) {
				t.Fatalf("file %q args %q env %s=%q: refusal line %q does not name the setting", file, args, envName, envValue, l)
			}
		}
	})
}

// checkEdgeSettings holds the properties of accepted edge settings.
func checkEdgeSettings(t *testing.T, s *settings) {
	t.Helper()
	rc := s.reconcile
	if events.ValidateToken("", rc.EdgeID) != nil || events.ValidateToken("", rc.Pool) != nil {
		t.Fatalf("accepted edge id %q, pool %q", rc.EdgeID, rc.Pool)
	}
	if !hostText.MatchString(rc.PublicHost) {
		t.Fatalf("accepted public host %q", rc.PublicHost)
	}
	if s.mediaOn && !s.publicIP.Is4() {
		t.Fatalf("accepted media with public ip %v", s.publicIP)
	}
	if len(rc.Policy.BackendCIDRs) == 0 || rc.Policy.BackendPorts.First < 1 || rc.Policy.BackendPorts.First > rc.Policy.BackendPorts.Last {
		t.Fatalf("accepted backend policy %v %v", rc.Policy.BackendCIDRs, rc.Policy.BackendPorts)
	}
	for _, p := range rc.Policy.BackendCIDRs {
		if p != p.Masked() || p.Addr().Zone() != "" {
			t.Fatalf("accepted backend CIDR %v", p)
		}
	}
	c := s.haproxy
	words := []string{c.Socket, c.MapFile, c.CertFile, c.BindAddr}
	holders := []string{"\xff1\xff", "\xff2\xff", "\xff3\xff", "\xff4\xff"}
	for _, w := range words {
		if strings.Contains(w, "\xff") {
			return // would collide with the placeholders
		}
	}
	for _, full := range []bool{true, false} {
		render := haproxy.RenderSections
		if full {
			render = haproxy.Render
		}
		got, err := render(c)
		if err != nil {
			t.Fatalf("accepted settings render no HAProxy configuration: %v", err)
		}
		p := c
		p.Socket, p.MapFile, p.CertFile, p.BindAddr = holders[0], holders[1], holders[2], holders[3]
		want, err := render(p)
		if err != nil {
			t.Fatalf("placeholders: %v", err)
		}
		for i, h := range holders {
			want = strings.ReplaceAll(want, h, words[i])
		}
		if got != want {
			t.Fatalf("socket %q map %q cert %q bind %q changed the HAProxy configuration beyond their words", c.Socket, c.MapFile, c.CertFile, c.BindAddr)
		}
	}
}
