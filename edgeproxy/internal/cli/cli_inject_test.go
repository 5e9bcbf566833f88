package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInjectionEdgeSettingsRefused sets each setting that ends up in the HAProxy configuration,
// a runtime command, an iptables rule, a NATS subject or the endpoint published to browsers to
// hostile values (line breaks, spaces, `;`, `#`, quotes, shell and iptables metacharacters), from
// the command line, the environment and the --config file in turn. Each is refused, and the
// refusal names where the value came from (flag --x, environment LIVEGATE_EDGEPROXY_X, config
// PATH: x) and, for a value that makes an HAProxy setting, that setting.
func TestInjectionEdgeSettingsRefused(t *testing.T) {
	base := []string{"--tls-self-signed", "--state-dir=/var/lib/livegate", "--public-ip=198.18.1.1", "--public-host=edge.example"}
	attached := append([]string{"--haproxy-socket=/run/haproxy.sock", "--tls-key=/k.pem"}, base[1:]...)
	paths := []string{"/x\n  stats socket /tmp/evil level admin", "/x y", "/x;show info", "/x#y", "/x'y", `/x"y`, `/x\y`, "/x\ty", "/x<<"}
	tests := []struct {
		name   string
		values []string
		args   []string
		// says is what the refusal says after the source, if anything in particular.
		says string
	}{
		{"public-host", []string{"edge.example\nX: y", "a b", "edge.example/x?y=", "h;x", "h#x", "$(reboot)", "`id`", "h|x", "-j", "fe80::1%eth0", ""}, base, ""},
		{"edge-id", []string{"a.b", "a b", "e>", "e*", "a;b", "a\nb", "$(id)", ""}, base, "edge id"},
		{"pool", []string{"p.q", "p >", "*", "p\r\n", "p#1", ""}, base, "pool"},
		{"haproxy-socket", paths, base, "haproxy socket"},
		{"haproxy-map", paths, base, "haproxy map file"},
		{"state-dir", paths, base, "haproxy socket"},
		{"tls-cert", paths, attached, "haproxy certificate file"},
		{"signaling-bind", []string{"0.0.0.0 ssl crt /etc/shadow", "0.0.0.0\nlisten evil", "0.0.0.0;x", "0.0.0.0#"}, base, "haproxy bind address"},
		{"backend-cidrs", []string{"10.0.0.0/8;0.0.0.0/0", "0.0.0.0/0 -j ACCEPT", "10.0.0.0/8\n-A INPUT", "10.0.0.1", "$(id)", "fe80::/10%eth0"}, base, ""},
		{"backend-ports", []string{"1-65536", "30000-32767;x", "0-10", "2-1", "30000 -j ACCEPT", "30000\n-A INPUT"}, base, ""},
		{"media-ports", []string{"10500-20000,1", "0-1", "10500:20000 -j ACCEPT", "x"}, base, ""},
		{"public-ip", []string{"198.18.1.1 -j ACCEPT", "198.18.1.1\n", "::1", "198.18.1.1/32", "$(id)"}, base, ""},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		for _, v := range tt.values {
			quoted, _ := json.Marshal(v) // a JSON string is a TOML basic string
			file := filepath.Join(dir, "edge.toml")
			named := map[string]string{"flag": "flag --" + tt.name, "environment": "environment " + EnvName(tt.name), "file": "config " + file + ": " + tt.name}
			sources := map[string]func() ([]string, []string){
				"flag": func() ([]string, []string) {
					return append(append([]string{}, tt.args...), "--"+tt.name+"="+v), nil
				},
				"environment": func() ([]string, []string) {
					return tt.args, []string{EnvName(tt.name) + "=" + v}
				},
				"file": func() ([]string, []string) {
					if err := os.WriteFile(file, []byte(tt.name+" = "+string(quoted)+"\n"), 0o600); err != nil {
						t.Fatal(err)
					}
					return append(append([]string{}, tt.args...), "--config", file), nil
				},
			}
			for src, source := range sources {
				args, env := source()
				// A flag in args wins over the other sources: leave out the one being tested.
				if src != "flag" {
					args = without(args, "--"+tt.name+"=")
				}
				fs, f := newFlagSet("run", &bytes.Buffer{}, nil)
				err := loadFlags(fs, f, args, env)
				if err == nil {
					_, err = f.settings(nil)
				}
				if err == nil || !strings.Contains(err.Error(), named[src]+": "+tt.says) {
					t.Errorf("--%s %q from the %s: got %v, want a refusal starting %q", tt.name, v, src, err, named[src]+": "+tt.says)
				}
			}
		}
	}
}

func without(args []string, prefix string) []string {
	var out []string
	for _, a := range args {
		if !strings.HasPrefix(a, prefix) {
			out = append(out, a)
		}
	}
	return out
}
