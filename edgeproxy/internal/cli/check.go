package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
)

// unreadableFiles names every file the settings point at that this host cannot read, all at once:
// check-config promises every problem, and the HAProxy check stops at the first file it lacks.
// The certificate of an operator's HAProxy (attached mode, another driver) is that host's path.
func unreadableFiles(s *settings) error {
	f := s.f
	files := []struct{ flag, path string }{
		{"nats-creds", f.natsCreds}, {"nats-nkey", f.natsNKey},
		{"nats-tls-ca", f.natsCA}, {"nats-tls-cert", f.natsCert}, {"nats-tls-key", f.natsKey},
	}
	supervised := !s.attached && f.driver == "runtime"
	if supervised && !s.selfCert {
		files = append(files, struct{ flag, path string }{"tls-cert", f.tlsCert}, struct{ flag, path string }{"tls-key", f.tlsKey})
	}
	var errs []error
	for _, x := range files {
		if x.path == "" {
			continue
		}
		fh, err := os.Open(x.path)
		if err != nil {
			errs = append(errs, fmt.Errorf("--%s: %w", x.flag, err))
			continue
		}
		_ = fh.Close()
	}
	if supervised {
		if _, err := exec.LookPath(f.haproxyBinary); err != nil {
			errs = append(errs, fmt.Errorf("--haproxy-binary: %w (install HAProxy 2.6 or newer)", err))
		}
	}
	return errors.Join(errs...)
}
