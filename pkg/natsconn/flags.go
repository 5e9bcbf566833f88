package natsconn

import (
	"errors"
	"flag"
	"fmt"

	"github.com/livegate/livegate/pkg/commalist"
)

// Flags are the NATS settings both binaries read, defined once so that their names (flag, TOML
// key, and after the program's prefix the environment variable) and help say the same in both.
type Flags struct {
	URL                                string
	CredsFile, NKeyFile                string
	TLSCAFile, TLSCertFile, TLSKeyFile string
	InboxPrefix                        string
	// Replicas is --nats-replicas, for a program that creates the buckets and the event stream.
	Replicas int
}

// Secret are the flags whose values may hold a secret (a URL's user:password), never repeated in
// an error.
var Secret = []string{"nats-url"}

// Register defines the connection flags: --nats-url, whose default is url and whose empty
// value means what empty says (a program that needs NATS leaves it ""), and the credential and
// TLS files.
func (f *Flags) Register(fs *flag.FlagSet, url, empty string) {
	help := "comma-separated NATS server URLs, tried in random order"
	if empty != "" {
		help += " (empty = " + empty + ")"
	}
	fs.StringVar(&f.URL, "nats-url", url, help)
	fs.StringVar(&f.CredsFile, "nats-creds", "", "NATS .creds file (user JWT and nkey seed); not with --nats-nkey")
	fs.StringVar(&f.NKeyFile, "nats-nkey", "", "NATS nkey seed file; not with --nats-creds")
	fs.StringVar(&f.TLSCAFile, "nats-tls-ca", "", "CA file that verifies the NATS servers")
	fs.StringVar(&f.TLSCertFile, "nats-tls-cert", "", "client certificate file for NATS, with --nats-tls-key")
	fs.StringVar(&f.TLSKeyFile, "nats-tls-key", "", "client key file for NATS, with --nats-tls-cert")
	fs.StringVar(&f.InboxPrefix, "nats-inbox-prefix", "", "prefix of the subjects this client gets its replies on (empty = _INBOX); give each identity its own, e.g. _INBOX.<id>, where the server lets it subscribe to that alone")
}

// RegisterReplicas defines --nats-replicas for a program (who: "agent", "edge") that creates the
// KV buckets and the event stream.
func (f *Flags) RegisterReplicas(fs *flag.FlagSet, who string) {
	fs.IntVar(&f.Replicas, "nats-replicas", 1, "copies of the KV buckets and the event stream when this "+who+" creates them: 1 on a single server, 3 on a three-node cluster; never lowers an existing count")
}

// Config is the connection the flags describe, for a client named name; the caller sets
// StaleAfter.
func (f *Flags) Config(name string) Config {
	return Config{
		URLs: commalist.Split(f.URL), CredsFile: f.CredsFile, NKeyFile: f.NKeyFile,
		TLSCAFile: f.TLSCAFile, TLSCertFile: f.TLSCertFile, TLSKeyFile: f.TLSKeyFile, InboxPrefix: f.InboxPrefix, Name: name,
	}
}

// Refusal is one setting the flags cannot take: Flag names it (without --) and Err says why,
// without repeating a secret.
type Refusal struct {
	Flag string
	Err  error
}

// Check refuses what can never connect, each refusal naming the flag at fault so that a program
// can say where its value came from. Replicas is checked when checkReplicas is set.
func (f *Flags) Check(checkReplicas bool) []Refusal {
	var out []Refusal
	if f.CredsFile != "" && f.NKeyFile != "" {
		out = append(out, Refusal{"nats-nkey", errors.New("set either --nats-creds or --nats-nkey, not both")})
	}
	if (f.TLSCertFile == "") != (f.TLSKeyFile == "") {
		// The one given is named: where it came from is where the other belongs.
		name := "nats-tls-cert"
		if f.TLSCertFile == "" {
			name = "nats-tls-key"
		}
		out = append(out, Refusal{name, errors.New("a TLS client certificate needs both --nats-tls-cert and --nats-tls-key")})
	}
	if urls := commalist.Split(f.URL); f.URL != "" && len(urls) == 0 {
		// Blank entries alone would leave the client its own default server.
		out = append(out, Refusal{"nats-url", errors.New("no server URL in the list")})
	} else if err := (Config{URLs: urls}).Validate(); err != nil {
		out = append(out, Refusal{"nats-url", err})
	}
	if err := validInboxPrefix(f.InboxPrefix); err != nil {
		out = append(out, Refusal{"nats-inbox-prefix", err})
	}
	if checkReplicas && (f.Replicas < 1 || f.Replicas > 5) {
		out = append(out, Refusal{"nats-replicas", fmt.Errorf("value %d: want 1 to 5", f.Replicas)})
	}
	return out
}
