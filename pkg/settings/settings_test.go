package settings

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type testFlags struct {
	pool   string
	port   int
	ttl    time.Duration
	snat   bool
	token  string
	media  []string
	config string
}

func newTestSet(out *bytes.Buffer) (*flag.FlagSet, *testFlags) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(out)
	f := &testFlags{media: []string{":1"}}
	fs.StringVar(&f.pool, "pool", "default", "pool")
	fs.StringVar(&f.pool, "pool-name", "default", "another name for --pool")
	fs.IntVar(&f.port, "port", 80, "port")
	fs.DurationVar(&f.ttl, "ttl", time.Second, "ttl")
	fs.BoolVar(&f.snat, "snat", true, "snat")
	fs.StringVar(&f.token, "token", "", "a secret")
	fs.Var(NewList(&f.media), "media", "media backends")
	fs.StringVar(&f.config, ConfigFlag, "", "file")
	fs.Bool("once", false, "a switch of the command line only")
	return fs, f
}

var testLoader = Loader{
	EnvPrefix: "T_",
	Aliases:   map[string]string{"pool-name": "pool"},
	Secrets:   map[string]bool{"token": true},
	FlagsOnly: map[string]bool{"once": true},
	Ignored:   map[string]bool{"other": true},
	LateName:  "late flags",
	Late: func(arg string) (Late, bool, error) {
		rest, ok := strings.CutPrefix(arg, "--/")
		if !ok {
			return Late{}, false, nil
		}
		k, v, _ := strings.Cut(rest, "=")
		if k == "kit/port" {
			return Late{Source: "flag --/" + k, Flag: "port", Value: v}, true, nil
		}
		return Late{Source: "flag --/" + k, Value: v, Hint: "the late flags are --/kit/port"}, true, nil
	},
}

// TestLoad: each source's precedence, where each value came from, and every refusal naming its
// source, setting and value (never a secret's).
func TestLoad(t *testing.T) {
	dir := t.TempDir()
	n := 0
	file := func(text string) string {
		n++
		p := filepath.Join(dir, fmt.Sprintf("%d.toml", n))
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := file("pool = \"file\"\nport = 81\nttl = \"2s\"\nsnat = false\nmedia = [\"a:1\", \"b:2\"]\n")
	tests := []struct {
		name  string
		args  []string
		env   []string
		check func(*testFlags, Sources) bool
		err   string
		usage bool
	}{
		{name: "defaults", check: func(f *testFlags, s Sources) bool {
			return f.pool == "default" && f.port == 80 && len(f.media) == 1 && s.Source("pool") == "--pool (default)"
		}},
		{name: "file", args: []string{"--config", good}, check: func(f *testFlags, s Sources) bool {
			return f.pool == "file" && f.port == 81 && f.ttl == 2*time.Second && !f.snat && strings.Join(f.media, " ") == "a:1 b:2" &&
				s["port"] == "config "+good+": port"
		}},
		{name: "environment over file", args: []string{"--config", good}, env: []string{"T_PORT=82", "T_MEDIA=c:3,d:4"}, check: func(f *testFlags, s Sources) bool {
			return f.port == 82 && strings.Join(f.media, " ") == "c:3 d:4" && s["port"] == "environment T_PORT"
		}},
		{name: "flag over environment", args: []string{"--port=83", "--media=e:5", "--media=f:6"}, env: []string{"T_PORT=82"}, check: func(f *testFlags, s Sources) bool {
			return f.port == 83 && strings.Join(f.media, " ") == "e:5 f:6" && s["port"] == "flag --port"
		}},
		{name: "late over flag", args: []string{"--port=83", "--/kit/port=84"}, check: func(f *testFlags, s Sources) bool {
			return f.port == 84 && s["port"] == "flag --/kit/port"
		}},
		{name: "alias flag over environment", args: []string{"--pool-name=flag"}, env: []string{"T_POOL=env"}, check: func(f *testFlags, s Sources) bool {
			return f.pool == "flag"
		}},
		{name: "config path from the environment", env: []string{"T_CONFIG=" + good}, check: func(f *testFlags, s Sources) bool { return f.pool == "file" }},
		{name: "bad flag", args: []string{"--port=abc"}, err: `flag --port: value "abc": want an integer`, usage: true},
		{name: "unknown flag", args: []string{"--nope"}, err: "command line: flag provided but not defined: -nope", usage: true},
		{name: "stray argument", args: []string{"stray"}, err: `command line: unexpected argument "stray"`, usage: true},
		{name: "unknown late", args: []string{"--/kit/nope=1"}, err: "flag --/kit/nope: unknown setting (the late flags are --/kit/port)", usage: true},
		{name: "unknown late with a line break", args: []string{"--/kit/a\nb=1"}, err: `"flag --/kit/a\nb": unknown setting`, usage: true},
		{name: "unknown flag with a line break", args: []string{"--a\nb"}, err: `command line: "flag provided but not defined: -a\nb"`, usage: true},
		{name: "ignored setting in the environment", env: []string{"T_OTHER=x"}, check: func(f *testFlags, s Sources) bool { return len(s) == 0 }},
		{name: "ignored setting in the file", args: []string{"--config", file("other = 1\n")}, check: func(f *testFlags, s Sources) bool { return len(s) == 1 }},
		{name: "ignored setting on the command line", args: []string{"--other=1"}, err: "command line: flag provided but not defined: -other", usage: true},
		{name: "switch on the command line", args: []string{"--once"}, check: func(f *testFlags, s Sources) bool { return s["once"] == "flag --once" }},
		{name: "switch in the environment", env: []string{"T_ONCE=1"}, err: "environment T_ONCE: --once is set on the command line only"},
		{name: "switch in the file", args: []string{"--config", file("once = true\n")}, err: ".toml: once: --once is set on the command line only"},
		{name: "unknown environment with a line break", env: []string{"T_A\nB=1"}, err: `environment "T_A\nB": unknown setting`},
		{name: "unknown key with a line break", args: []string{"--config", file("\"a\\nb\" = 1\n")}, err: `.toml: "a\nb": unknown setting (the keys are the flag names; -h lists them)`},
		{name: "bad late", args: []string{"--/kit/port=x"}, err: `flag --/kit/port: value "x": want an integer`, usage: true},
		{name: "bad environment", env: []string{"T_TTL=soon"}, err: `environment T_TTL: value "soon": want a duration`},
		{name: "unknown environment", env: []string{"T_PROT=1"}, err: "environment T_PROT: unknown setting"},
		{name: "alias twice in the environment", env: []string{"T_POOL=a", "T_POOL_NAME=b"}, err: "environment: T_POOL and T_POOL_NAME both set --pool"},
		{name: "all environment errors", env: []string{"T_PROT=1", "T_TTL=soon"}, err: "environment T_PROT: unknown setting (the variables are T_ and a flag name in upper case, - as _; -h lists them)\nenvironment T_TTL"},
		{name: "unknown key", args: []string{"--config", file("prot = 1\n")}, err: ".toml: prot: unknown setting"},
		{name: "config key", args: []string{"--config", file("config = \"/x\"\n")}, err: ".toml: config: a settings file cannot name another (--config is read before the file)"},
		{name: "wrong TOML type", args: []string{"--config", file("port = \"81\"\n")}, err: `.toml: port: value "81" is a TOML string; want an integer`},
		{name: "bad TOML duration", args: []string{"--config", file("ttl = \"soon\"\n")}, err: `.toml: ttl: value "soon": want a duration`},
		{name: "list of numbers", args: []string{"--config", file("media = [1]\n")}, err: ".toml: media: want a list of strings"},
		{name: "secret not shown", args: []string{"--config", file("token = 12345\n")}, err: ".toml: token: value (secret, not shown) is a TOML integer; want a string"},
		{name: "malformed file", args: []string{"--config", file("pool = \n")}, err: ".toml: toml:"},
		{name: "missing file", args: []string{"--config", filepath.Join(dir, "nope.toml")}, err: "nope.toml: open"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs, f := newTestSet(&bytes.Buffer{})
			src, err := testLoader.Load(fs, tt.args, tt.env)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || errors.Is(err, ErrUsage) != tt.usage {
					t.Fatalf("error %v (usage %t); want one with %q (usage %t)", err, errors.Is(err, ErrUsage), tt.err, tt.usage)
				}
				if strings.Contains(err.Error(), "12345") {
					t.Fatalf("error %q repeats a secret", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(f, src) {
				t.Errorf("settings %+v, sources %v", f, src)
			}
		})
	}
}

// TestHelp: -h writes the usage, and each flag's help names its variable.
func TestHelp(t *testing.T) {
	var out bytes.Buffer
	fs, _ := newTestSet(&out)
	testLoader.Annotate(fs)
	if _, err := testLoader.Load(fs, []string{"-h"}, nil); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err %v", err)
	}
	fs.Usage = testLoader.Usage(fs, "test [flags]", "Tests.")
	if _, err := testLoader.Load(fs, []string{"-h"}, nil); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err %v", err)
	}
	for _, want := range []string{"[env T_PORT]", "[env T_POOL_NAME]", "[env T_CONFIG]", "(default 80)", "usage: test [flags]\n\nTests.\n",
		"Precedence: late flags, flags, the environment, the file, then the defaults."} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "T_ONCE") {
		t.Errorf("help names a variable for a switch of the command line only:\n%s", out.String())
	}
}

// TestReport: a refused command line points at -h, other refusals do not; every refusal after
// loading names where the value came from.
func TestReport(t *testing.T) {
	src := Sources{"pool": "environment T_POOL"}
	tests := []struct {
		err  error
		want string
	}{
		{usageError{errors.New("command line: unexpected argument \"x\"")}, "prog run: command line: unexpected argument \"x\"\n(`prog run -h` lists the flags)\n"},
		{errors.New("environment T_PROT: unknown setting"), "prog run: environment T_PROT: unknown setting\n"},
		{src.Errorf("pool", "value %q: want a token", "a b"), "prog run: environment T_POOL: value \"a b\": want a token\n"},
		{src.Errorf("port", "value %d: want 1 to 65535", 0), "prog run: --port (default): value 0: want 1 to 65535\n"},
	}
	for _, tt := range tests {
		var b bytes.Buffer
		Report(&b, "prog run", tt.err)
		if b.String() != tt.want {
			t.Errorf("Report(%v) = %q, want %q", tt.err, b.String(), tt.want)
		}
	}
}
