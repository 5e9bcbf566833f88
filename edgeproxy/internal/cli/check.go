package cli

import (
	"errors"
	"os"
	"os/exec"
)

// unreadableFiles names every file the settings point at that this host cannot read, all at once:
// check-config promises every problem, and the HAProxy check stops at the first file it lacks.
// The certificate of an operator's HAProxy (attached mode, another driver) is that host's path.
func unreadableFiles(s *settings) error {
	n := s.nats
	files := []struct{ flag, path string }{
		{"nats-creds", n.CredsFile}, {"nats-nkey", n.NKeyFile},
		{"nats-tls-ca", n.TLSCAFile}, {"nats-tls-cert", n.TLSCertFile}, {"nats-tls-key", n.TLSKeyFile},
	}
	supervised := !s.attached && !s.driver.External()
	if supervised && !s.selfCert {
		files = append(files, struct{ flag, path string }{"tls-cert", s.tlsCert}, struct{ flag, path string }{"tls-key", s.tlsKey})
	}
	var errs []error
	for _, x := range files {
		if x.path == "" {
			continue
		}
		fh, err := os.Open(x.path)
		if err != nil {
			errs = append(errs, s.f.refuse(x.flag, "%w", err))
			continue
		}
		_ = fh.Close()
	}
	if supervised {
		if _, err := exec.LookPath(s.haproxyBinary); err != nil {
			errs = append(errs, s.f.refuse("haproxy-binary", "%w (install HAProxy 2.6 or newer)", err))
		}
	}
	return errors.Join(errs...)
}
