// Package natsconn connects both binaries to NATS the same way: a URL list, optional credentials
// (a .creds file or an nkey seed file) and TLS, reconnecting forever with jittered backoff and
// saying why on every disconnect.
package natsconn

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Config says where and how to connect. Secrets stay in files; their contents are never logged.
type Config struct {
	// URLs are the servers, e.g. nats://10.0.0.1:4222, tried in random order so that clients spread
	// over a cluster; the servers of a cluster the client learns from the one it reaches are tried
	// too. Empty means nats://127.0.0.1:4222.
	URLs []string
	// CredsFile is a NATS .creds file (user JWT and nkey seed).
	CredsFile string
	// NKeyFile is a file holding an nkey seed.
	NKeyFile string
	// TLSCAFile verifies the server; TLSCertFile and TLSKeyFile present a client certificate.
	TLSCAFile   string
	TLSCertFile string
	TLSKeyFile  string
	// Name is the connection name the server shows in its monitoring.
	Name string
	// InboxPrefix, when set, replaces _INBOX in the subjects this client gets its replies and
	// watch deliveries on, so that a server can let each identity subscribe to its own alone
	// (deploy/nats/accounts.conf): with one shared _INBOX.> anyone may read everyone's.
	InboxPrefix string
	// StaleAfter bounds how long a server that stopped answering (a host gone, a network cut) goes
	// unnoticed before the client moves to another: set it below the lifetime of the keys the
	// client keeps alive. Zero means 30 s.
	StaleAfter time.Duration
}

// Validate reports a configuration that can never connect.
func (c Config) Validate() error {
	if c.CredsFile != "" && c.NKeyFile != "" {
		return errors.New("nats: set either a credentials file or an nkey file, not both")
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("nats: a TLS client certificate needs both the certificate and the key file")
	}
	if err := validInboxPrefix(c.InboxPrefix); err != nil {
		return err
	}
	for _, u := range c.URLs {
		if strings.TrimSpace(u) == "" {
			return errors.New("nats: empty server URL")
		}
		// Checked here so that the client's own parse error, which quotes the URL with its
		// password, never reaches a log.
		full := u
		if !strings.Contains(full, "://") {
			full = "nats://" + full
		}
		if _, err := url.Parse(full); err != nil {
			return fmt.Errorf("nats: server URL %q is not a valid URL", RedactURL(u))
		}
	}
	return nil
}

// Connect returns a connection that reconnects forever. If no server answers yet, it returns a
// connection that keeps trying in the background (nats.RetryOnFailedConnect), so a process can
// start before its broker; ctx bounds only the set-up itself.
func Connect(ctx context.Context, cfg Config, log zerolog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	urls := cfg.URLs
	if len(urls) == 0 {
		urls = []string{nats.DefaultURL}
	}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.CustomReconnectDelay(backoff),
		nats.ReconnectBufSize(16 << 20),
		nats.PingInterval(pingInterval(cfg.StaleAfter)),
		nats.MaxPingsOutstanding(pingsOutstanding),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			if err == nil && c.IsClosed() {
				log.Debug().Msg("nats connection closed")
				return
			}
			reason := "closed by server or client"
			if err != nil {
				reason = err.Error()
			}
			log.Warn().Str("reason", reason).Msg("nats disconnected")
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("server", nc.ConnectedUrlRedacted()).Msg("nats reconnected")
			notifyReconnect(nc)
		}),
		nats.ClosedHandler(forget),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info().Str("server", nc.ConnectedUrlRedacted()).Msg("nats connected")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			ev := log.Warn().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("nats async error")
		}),
	}
	if cfg.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(cfg.InboxPrefix))
	}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.NKeyFile != "" {
		opt, err := nats.NkeyOptionFromSeed(cfg.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("nats: nkey file %s: %w", cfg.NKeyFile, err)
		}
		opts = append(opts, opt)
	}
	if cfg.TLSCAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCAFile))
	}
	if cfg.TLSCertFile != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCertFile, cfg.TLSKeyFile))
	}
	opts = append(opts, extra...)
	nc, err := nats.Connect(strings.Join(urls, ","), opts...)
	if err != nil {
		return nil, fmt.Errorf("nats: connect %s: %w", redact(urls), err)
	}
	return nc, nil
}

// pingsOutstanding unanswered pings make a connection stale: the client pings every StaleAfter /
// (pingsOutstanding+1), and one slow answer alone does not cost a reconnect.
const pingsOutstanding = 2

func pingInterval(staleAfter time.Duration) time.Duration {
	if staleAfter <= 0 {
		staleAfter = 30 * time.Second
	}
	return max(staleAfter/(pingsOutstanding+1), 100*time.Millisecond)
}

// backoff grows the wait between rounds over the whole server list, up to 5 s.
func backoff(attempts int) time.Duration {
	d := 250 * time.Millisecond << min(attempts, 5)
	return min(d, 5*time.Second)
}

// redact drops user:password from URLs before they reach an error or a log.
func redact(urls []string) string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = RedactURL(u)
	}
	return strings.Join(out, ",")
}

// RedactURL is u with the user and password it may carry replaced by [redacted], for errors
// and logs.
func RedactURL(u string) string {
	if at := strings.LastIndex(u, "@"); at >= 0 {
		scheme := ""
		if p := strings.Index(u, "://"); p >= 0 && p < at {
			scheme = u[:p+3]
		}
		u = scheme + "[redacted]@" + u[at+1:]
	}
	return u
}

var (
	listenersMu sync.Mutex
	listeners   = map[*nats.Conn][]chan struct{}{}
)

// Reconnects returns a channel that receives after each reconnect of nc (a connection made by
// Connect). A reconnect that finds the channel full is folded into the pending one.
func Reconnects(nc *nats.Conn) <-chan struct{} {
	ch := make(chan struct{}, 1)
	listenersMu.Lock()
	listeners[nc] = append(listeners[nc], ch)
	listenersMu.Unlock()
	return ch
}

func notifyReconnect(nc *nats.Conn) {
	listenersMu.Lock()
	defer listenersMu.Unlock()
	for _, ch := range listeners[nc] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func forget(nc *nats.Conn) {
	listenersMu.Lock()
	delete(listeners, nc)
	listenersMu.Unlock()
}

// validInboxPrefix refuses what nats.CustomInboxPrefix would: wildcards, empty tokens, a
// trailing dot; "" is the client's default.
func validInboxPrefix(p string) error {
	if p == "" {
		return nil
	}
	for tok := range strings.SplitSeq(p, ".") {
		if tok == "" || strings.ContainsAny(tok, "*> \t\r\n") {
			return fmt.Errorf("nats: inbox prefix %q: want subject tokens without wildcards or spaces, such as _INBOX.app-1", p)
		}
	}
	return nil
}
