package cli

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSettingsSources: flags win over LIVEGATE_EDGEPROXY_* variables, which win over the
// --config file; every bad value names where it came from.
func TestSettingsSources(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("edge.toml", `
pool = "from-file"
edge-id = "edge-file"
resync = "45s"
max-routes = 500
snat = false
backend-cidrs = ["10.1.0.0/16", "10.2.0.0/16"]
media = "off"
`)
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, f *flags)
		err   string
	}{
		{name: "file only", args: []string{"--config", good}, check: func(t *testing.T, f *flags) {
			if f.pool != "from-file" || f.edgeID != "edge-file" || f.resync.String() != "45s" || f.maxRoutes != 500 || f.snat || f.backendCIDRs != "10.1.0.0/16,10.2.0.0/16" {
				t.Errorf("file not applied: %+v", f)
			}
		}},
		{name: "environment over file", args: []string{"--config", good}, env: map[string]string{"LIVEGATE_EDGEPROXY_POOL": "from-env"}, check: func(t *testing.T, f *flags) {
			if f.pool != "from-env" || f.edgeID != "edge-file" {
				t.Errorf("pool %q edge %q", f.pool, f.edgeID)
			}
		}},
		{name: "flag over environment", args: []string{"--config", good, "--pool", "from-flag"}, env: map[string]string{"LIVEGATE_EDGEPROXY_POOL": "from-env"}, check: func(t *testing.T, f *flags) {
			if f.pool != "from-flag" {
				t.Errorf("pool %q", f.pool)
			}
		}},
		{name: "config path from the environment", env: map[string]string{"LIVEGATE_EDGEPROXY_CONFIG": good}, check: func(t *testing.T, f *flags) {
			if f.pool != "from-file" {
				t.Errorf("pool %q", f.pool)
			}
		}},
		{name: "bad environment value", env: map[string]string{"LIVEGATE_EDGEPROXY_RESYNC": "soon"}, err: `environment LIVEGATE_EDGEPROXY_RESYNC: value "soon": want a duration`},
		{name: "bad environment number", env: map[string]string{"LIVEGATE_EDGEPROXY_MAX_ROUTES": "10k"}, err: `environment LIVEGATE_EDGEPROXY_MAX_ROUTES: value "10k": want an integer`},
		{name: "unknown environment variable", env: map[string]string{"LIVEGATE_EDGEPROXY_RESYNK": "1s"}, err: `environment LIVEGATE_EDGEPROXY_RESYNK: unknown setting`},
		{name: "alias flag over canonical environment", args: []string{"--haproxy-driver", "dataplaneapi"}, env: map[string]string{"LIVEGATE_EDGEPROXY_DRIVER": "runtime"}, check: wantDriver("dataplaneapi")},
		{name: "flag over alias environment", args: []string{"--driver", "dataplaneapi"}, env: map[string]string{"LIVEGATE_EDGEPROXY_HAPROXY_DRIVER": "runtime"}, check: wantDriver("dataplaneapi")},
		{name: "alias environment over canonical file key", args: []string{"--config", write("driver.toml", "driver = \"runtime\"\n")}, env: map[string]string{"LIVEGATE_EDGEPROXY_HAPROXY_DRIVER": "dataplaneapi"}, check: wantDriver("dataplaneapi")},
		{name: "alias flag over canonical file key", args: []string{"--config", write("driver.toml", "driver = \"runtime\"\n"), "--haproxy-driver", "dataplaneapi"}, check: wantDriver("dataplaneapi")},
		{name: "alias in the file", args: []string{"--config", write("alias.toml", "haproxy-driver = \"dataplaneapi\"\n")}, check: wantDriver("dataplaneapi")},
		{name: "flag and alias both in the environment", env: map[string]string{"LIVEGATE_EDGEPROXY_DRIVER": "runtime", "LIVEGATE_EDGEPROXY_HAPROXY_DRIVER": "dataplaneapi"}, err: "environment: LIVEGATE_EDGEPROXY_DRIVER and LIVEGATE_EDGEPROXY_HAPROXY_DRIVER both set --driver"},
		{name: "flag and alias both in the file", args: []string{"--config", write("both.toml", "driver = \"runtime\"\nhaproxy-driver = \"dataplaneapi\"\n")}, err: `"driver" and "haproxy-driver" both set --driver`},
		{name: "unknown key", args: []string{"--config", write("unknown.toml", "resynk = \"1s\"\n")}, err: `unknown.toml: resynk: unknown setting`},
		{name: "config key in the file", args: []string{"--config", write("self.toml", "config = \"/x\"\n")}, err: `self.toml: config: a settings file cannot name another`},
		{name: "wrong type", args: []string{"--config", write("type.toml", "max-routes = \"many\"\n")}, err: `max-routes: value "many" is a TOML string; want an integer`},
		{name: "bad boolean in the file", args: []string{"--config", write("bool.toml", "snat = \"yes\"\n")}, err: `snat: value "yes" is a TOML string; want true or false`},
		{name: "list of numbers", args: []string{"--config", write("list.toml", "backend-cidrs = [1, 2]\n")}, err: "backend-cidrs: want a list of strings"},
		{name: "table", args: []string{"--config", write("table.toml", "[pool]\nname = \"x\"\n")}, err: "pool: want a string"},
		{name: "malformed", args: []string{"--config", write("bad.toml", "pool = \n")}, err: "bad.toml"},
		{name: "missing file", args: []string{"--config", filepath.Join(dir, "nope.toml")}, err: "nope.toml: no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var out bytes.Buffer
			fs, f := newFlagSet("run", &out, nil)
			err := f.parse(fs, tt.args)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(out.String(), tt.err) {
					t.Fatalf("error %v, output %q; want one naming %q", err, out.String(), tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, f)
		})
	}
}

func wantDriver(want string) func(*testing.T, *flags) {
	return func(t *testing.T, f *flags) {
		t.Helper()
		if f.driver != Driver(want) {
			t.Errorf("driver %q, want %q", f.driver, want)
		}
	}
}

// TestHelpNamesEveryEnvironmentVariable: each flag's help gives the variable that also sets it.
func TestHelpNamesEveryEnvironmentVariable(t *testing.T) {
	var out bytes.Buffer
	fs, _ := newFlagSet("run", &out, nil)
	fs.Usage()
	n := 0
	for _, line := range strings.Split(out.String(), "\n") {
		name, ok := strings.CutPrefix(strings.TrimSpace(line), "-")
		if !ok {
			continue
		}
		name, _, _ = strings.Cut(name, " ")
		n++
		if !strings.Contains(out.String(), "[env "+EnvName(name)+"]") {
			t.Errorf("help of --%s lacks [env %s]", name, EnvName(name))
		}
	}
	if n < 40 {
		t.Fatalf("help lists %d flags:\n%s", n, out.String())
	}
}

// TestCheckConfigReadsTheFile: check-config validates a settings file as run would read it.
func TestCheckConfigReadsTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "edge.toml")
	if err := os.WriteFile(path, []byte("media = \"on\"\npublic-ip = \"not-an-ip\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := CheckConfigCommand(Hooks{})(context.Background(), []string{"--config", path, "--state-dir", t.TempDir(), "--tls-self-signed"}, &out, &errOut)
	if code != 2 || !strings.Contains(errOut.String(), "config "+path+": public-ip: value \"not-an-ip\"") {
		t.Fatalf("exit %d, %q", code, errOut.String())
	}
}

// TestDocsCoverEveryFlag keeps docs/edgeproxy.md in step with the flags.
func TestDocsCoverEveryFlag(t *testing.T) {
	b, err := os.ReadFile("../../../docs/edgeproxy.md")
	if err != nil {
		t.Fatal(err)
	}
	fs, _ := newFlagSet("run", &bytes.Buffer{}, nil)
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(string(b), "`--"+f.Name) {
			t.Errorf("docs/edgeproxy.md does not mention --%s", f.Name)
		}
	})
	if !strings.Contains(string(b), EnvPrefix) {
		t.Errorf("docs/edgeproxy.md does not explain %s variables", EnvPrefix)
	}
}

// loadFlags reads args and environ into fs as run reads them, writing nothing.
func loadFlags(fs *flag.FlagSet, f *flags, args, environ []string) error {
	src, err := f.loader.Load(fs, args, environ)
	f.src = src
	return err
}
