package cli

import (
	"fmt"
	"os"
)

// readableSecrets names the secret files (the flags' values, after where each came from) that
// every user of the host may read.
// The edge runs anyway, as the file may sit on a mount whose modes it cannot change, but says so.
func readableSecrets(s *settings) []string {
	var out []string
	for _, f := range []struct{ flag, path string }{
		{"nats-creds", s.nats.CredsFile}, {"nats-nkey", s.nats.NKeyFile}, {"nats-tls-key", s.nats.TLSKeyFile}, {"tls-key", s.tlsKey},
	} {
		if f.path == "" {
			continue
		}
		if fi, err := os.Stat(f.path); err == nil && fi.Mode().Perm()&0o004 != 0 {
			out = append(out, fmt.Sprintf("%s: %s is readable by every user of this host (mode %04o); chmod o-r it", s.f.src.Source(f.flag), f.path, fi.Mode().Perm()))
		}
	}
	return out
}
