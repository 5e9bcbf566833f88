package cli

import (
	"net/netip"

	"github.com/livegate/livegate/edgeproxy/internal/turnrelay"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// turnConfig is the TURN relay's configuration (nil without --turn): it serves at the media
// plane's public IP, or --public-ip as given when the media plane is off, and over TLS with the
// signaling certificate.
func turnConfig(f *flags, s *settings) (*turnrelay.Config, error) {
	ip := s.publicIP
	if !ip.IsValid() {
		ip, _ = netip.ParseAddr(f.publicIP)
	}
	var cert, key string
	switch {
	case f.tlsCert != "" && f.tlsKey != "":
		cert, key = f.tlsCert, f.tlsKey
	case f.tlsCert != "":
		cert, key = f.tlsCert, f.tlsCert
	case s.selfCert:
		cert, key = s.haproxy.CertFile, s.haproxy.CertFile
	}
	return f.turn.Config(f.publicHost, ip, s.mediaPorts, cert, key, f.src.Source)
}

// turnRelay binds the TURN relay of --turn (nil without it). A self-signed certificate is made
// here first: the relay binds before the supervised HAProxy's files are prepared.
func turnRelay(s *settings, reg prometheus.Registerer, resync func(), log zerolog.Logger) (*turnrelay.Relay, error) {
	if s.turn == nil {
		return nil, nil
	}
	if s.selfCert {
		if err := prepareTLS(s); err != nil {
			return nil, err
		}
	}
	return turnrelay.New(*s.turn, reg, log.With().Str("component", "turn").Logger(), resync)
}
