package settings

import (
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// hostileValues are what an operator's typo or a templating mistake could put into a setting
// that ends up in a route, a NATS subject or a KV key.
var hostileValues = []string{
	"a\nb", "a\rb", "a b", "a;b", "a#b", "$(reboot)", "`id`", "a|b", "a&b", "-j ACCEPT", "x --to-destination 1.2.3.4:1",
	"a\x00b", "sessi\u043en", "\uff53ession", "a\u00a0b", strings.Repeat("a", 129),
}

// TestInjectionSettingsRefused sets each hostile value through each source the agent reads —
// native flag, environment variable and TOML file — for every setting that reaches a route, a
// subject or a KV key. Each is refused with an error that names the setting and the source.
func TestInjectionSettingsRefused(t *testing.T) {
	dir := t.TempDir()
	settings := []string{"session-id", "instance-id", "pool", "edge-id", "signaling-backend", "media-backend", "backend-ip", "host", "app-addr", "app-probe"}
	for _, name := range settings {
		// Flags outrank the environment and the file, so the one under test is never also a flag.
		base := []string{"--nats-url=nats://127.0.0.1:4222", "--signaling-backend=198.19.0.10:49100", "--media-backend=198.19.0.10:47998"}
		if strings.HasSuffix(name, "-backend") {
			base = []string{"--nats-url=nats://127.0.0.1:4222", "--backend-ip=198.19.0.10"}
		}
		for i, v := range hostileValues {
			if name == "media-backend" && strings.Contains(v, ",") {
				continue
			}
			t.Run(name+"/"+strconv.Itoa(i), func(t *testing.T) {
				_, err := Load(append(base, "--"+name+"="+v), nil, io.Discard)
				wantErr(t, err, "flag --"+name)

				env := []string{loader.EnvName(name) + "=" + v}
				_, err = Load(base, env, io.Discard)
				wantErr(t, err, "environment "+loader.EnvName(name))

				path := filepath.Join(dir, "agent.toml")
				value := strconv.Quote(v)
				if name == "media-backend" {
					value = "[" + value + "]"
				}
				if err := os.WriteFile(path, []byte(name+" = "+tomlString(value)+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				_, err = Load(append(base, "--config", path), nil, io.Discard)
				wantErr(t, err, "config "+path+": "+name)
			})
		}
	}
}

// TestInjectionKitFlagsRefused sets the Kit settings to values outside their ranges or of the
// wrong type, as Kit-style flags and in a .kit file.
func TestInjectionKitFlagsRefused(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct{ key, value, tomlValue string }{
		{"exts/" + HTTPExt + "/port", "0", "0"},
		{"exts/" + HTTPExt + "/port", "65536", "65536"},
		{"exts/" + HTTPExt + "/port", "8011;reboot", `"8011;reboot"`},
		{"exts/" + HTTPExt + "/port", "8011\n", `"8011\n"`},
		{"exts/" + SessionExt + "/resumeTimeoutSeconds", "-1", "-1"},
		{"exts/" + SessionExt + "/resumeTimeoutSeconds", "$(reboot)", `"$(reboot)"`},
		{"exts/" + SessionExt + "/quitOnSessionEnded", "yes", `"yes"`},
		{"exts/" + SessionExt + "/waitForSessionReadyEvent", "1 -j ACCEPT", `"1 -j ACCEPT"`},
	} {
		t.Run(tt.key+"="+tt.value, func(t *testing.T) {
			_, err := Load([]string{"--/" + tt.key + "=" + tt.value}, nil, io.Discard)
			wantErr(t, err, "flag --/"+tt.key)

			parts := strings.Split(tt.key, "/")
			path := filepath.Join(dir, "app.kit")
			kit := "[settings]\nexts." + strconv.Quote(parts[1]) + "." + parts[2] + " = " + tt.tomlValue + "\n"
			if err := os.WriteFile(path, []byte(kit), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err = Load([]string{"--config", path}, nil, io.Discard)
			wantErr(t, err, "config "+path+": settings.exts."+strconv.Quote(parts[1])+"."+parts[2])
		})
	}
}

// tomlString turns a Go-quoted string into a TOML basic string: the escapes Go uses for
// non-printable characters are TOML's too, except \x, which TOML spells \u00.
func tomlString(goQuoted string) string { return strings.ReplaceAll(goQuoted, `\x`, `\u00`) }

func wantErr(t *testing.T, err error, source string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want a refusal from %s", source)
	}
	if !strings.HasPrefix(err.Error(), source) {
		t.Fatalf("refusal %q does not start with %q", err, source)
	}
}
