package natsconn

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"testing"
)

// TestFlags: the flags both binaries read, their defaults and the refusals, each naming its flag
// and never a URL's password.
func TestFlags(t *testing.T) {
	tests := []struct {
		name     string
		url      string
		args     []string
		replicas bool
		want     []string // "flag: text" per refusal
		config   Config
	}{
		{name: "defaults", url: "nats://127.0.0.1:4222", config: Config{URLs: []string{"nats://127.0.0.1:4222"}, Name: "n"}},
		{name: "no NATS", url: "", config: Config{Name: "n"}},
		{name: "URL list", args: []string{"--nats-url", " nats://a:4222 ,, nats://b:4222"}, config: Config{URLs: []string{"nats://a:4222", "nats://b:4222"}, Name: "n"}},
		{name: "files", args: []string{"--nats-creds=/c", "--nats-tls-ca=/ca", "--nats-tls-cert=/cert", "--nats-tls-key=/key"},
			config: Config{CredsFile: "/c", TLSCAFile: "/ca", TLSCertFile: "/cert", TLSKeyFile: "/key", Name: "n"}},
		{name: "creds and nkey", args: []string{"--nats-creds=/c", "--nats-nkey=/n"}, want: []string{"nats-nkey: set either --nats-creds or --nats-nkey, not both"}},
		{name: "certificate without key", args: []string{"--nats-tls-cert=/c"}, want: []string{"nats-tls-cert: a TLS client certificate needs both"}},
		{name: "key without certificate", args: []string{"--nats-tls-key=/k"}, want: []string{"nats-tls-key: a TLS client certificate needs both"}},
		{name: "inbox prefix", args: []string{"--nats-inbox-prefix=_INBOX.app-1"}, config: Config{InboxPrefix: "_INBOX.app-1", Name: "n"}},
		{name: "inbox prefix with a wildcard", args: []string{"--nats-inbox-prefix=_INBOX.*"}, want: []string{"nats-inbox-prefix: nats: inbox prefix \"_INBOX.*\": want subject tokens"}},
		{name: "inbox prefix with a trailing dot", args: []string{"--nats-inbox-prefix=_INBOX.a."}, want: []string{"nats-inbox-prefix: nats: inbox prefix"}},
		{name: "blank entries only", args: []string{"--nats-url", " , "}, want: []string{"nats-url: no server URL in the list"}},
		{name: "URL that does not parse", args: []string{"--nats-url=nats://user:hunter2@%zz:4222"}, want: []string{"nats-url: nats: server URL \"nats://[redacted]@%zz:4222\" is not a valid URL"}},
		{name: "replicas", args: []string{"--nats-replicas=6"}, replicas: true, want: []string{"nats-replicas: value 6: want 1 to 5"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			var f Flags
			f.Register(fs, tt.url, "")
			if tt.replicas {
				f.RegisterReplicas(fs, "test")
			} else if fs.Lookup("nats-replicas") != nil {
				t.Fatal("--nats-replicas defined without RegisterReplicas")
			}
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range f.Check(tt.replicas) {
				got = append(got, r.Flag+": "+r.Err.Error())
			}
			if len(got) != len(tt.want) {
				t.Fatalf("refusals %q, want %q", got, tt.want)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tt.want[i]) || strings.Contains(got[i], "hunter2") {
					t.Errorf("refusal %q, want %q", got[i], tt.want[i])
				}
			}
			if len(tt.want) == 0 {
				if c := f.Config("n"); fmt.Sprint(c) != fmt.Sprint(tt.config) {
					t.Errorf("config %+v, want %+v", c, tt.config)
				}
			}
		})
	}
}

// TestRegisterHelp: what an empty --nats-url means is said where the program gives it meaning.
func TestRegisterHelp(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var f Flags
	f.Register(fs, "", "no NATS")
	f.RegisterReplicas(fs, "agent")
	if u := fs.Lookup("nats-url").Usage; !strings.HasSuffix(u, "(empty = no NATS)") {
		t.Errorf("--nats-url help %q", u)
	}
	if u := fs.Lookup("nats-replicas").Usage; !strings.Contains(u, "when this agent creates them") {
		t.Errorf("--nats-replicas help %q", u)
	}
}
