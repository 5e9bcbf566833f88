package cli

import (
	"fmt"
	"net"
	"strconv"

	"github.com/livegate/livegate/pkg/buildinfo"
	"github.com/livegate/livegate/pkg/natsconn"
	"github.com/rs/zerolog"
)

// banner says where the edge serves, so the first lines of its log answer "what do I point a
// browser at": the signaling URL, the certificate in use, the media range, the admin API, NATS.
func banner(log zerolog.Logger, s *settings, natsURLs []string) *zerolog.Event {
	cert := s.tlsCert
	switch {
	case s.selfCert:
		cert = "self-signed for " + s.reconcile.PublicHost + " and localhost, " + s.haproxy.CertFile
	case s.attached || s.driver.External():
		cert = "the operator's HAProxy's (" + cert + ")"
	}
	ev := log.Info().Str("pool", s.reconcile.Pool).Str("public_host", s.reconcile.PublicHost).Int("signaling_port", s.haproxy.Port).
		Str("signaling_url", fmt.Sprintf("wss://%s/sign_in", net.JoinHostPort(s.reconcile.PublicHost, strconv.Itoa(s.haproxy.Port)))).
		Str("certificate", cert).Bool("attached", s.attached).Str("driver", string(s.driver)).Str("media", mediaMode(s.mediaOn)).
		Str("session_token", s.haproxy.Tokens.Mode).Str("admin_url", "http://"+s.adminAddr).Strs("nats", redactURLs(natsURLs)).Str("version", buildinfo.Version)
	if s.mediaOn {
		ev = ev.Str("media_ports", s.mediaPorts.String()+"/udp").Str("public_ip", s.publicIP.String())
	}
	if s.turn != nil {
		ev = ev.Strs("turn_uris", s.turn.URIs)
	}
	return ev
}

// redactURLs drops the user and password a NATS URL may carry.
func redactURLs(urls []string) []string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = natsconn.RedactURL(u)
	}
	return out
}

// mediaMode is --media as it was given.
func mediaMode(on bool) string {
	if on {
		return "on"
	}
	return "off"
}
