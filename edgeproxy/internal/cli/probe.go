package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/probe"
	"github.com/livegate/livegate/pkg/dtlssrtp"
	"github.com/livegate/livegate/pkg/sessionid"
	settingsload "github.com/livegate/livegate/pkg/settings"
)

// Exit codes of ProbeCommand.
const (
	probeOK     = 0
	probeFailed = 1
	probeUsage  = 2
)

type mediaFlag []string

func (m *mediaFlag) String() string { return strings.Join(*m, ",") }

func (m *mediaFlag) Set(v string) error {
	addr, err := probe.MediaAddr(v)
	if err != nil {
		return err
	}
	*m = append(*m, addr)
	return nil
}

type probeOptions struct {
	signaling string
	sessionID string
	media     mediaFlag
	insecure  bool
	count     int
	rate      float64
	timeout   time.Duration
	maxLoss   float64
}

// parseProbe reads probe's flags, from the command line only: they describe one check, not the
// edge, so no variable or file sets them.
func parseProbe(args []string, stderr io.Writer) (*probeOptions, error) {
	var o probeOptions
	const name = "livegate-edgeproxy probe"
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var l settingsload.Loader
	fs.Usage = l.Usage(fs, name+" [--signaling wss://HOST:48322/sign_in --session-id ID] [--media udp://HOST:PORT]... [flags]", `
Checks a live session through an edge: the signaling websocket (101 with the x-nv-sessionid.<id>
subprotocol echoed) and, for each --media, a DTLS-SRTP handshake and an RTP echo through the public
UDP port (round trip, loss, jitter). Exits 0 when every check passes, 1 when one fails, 2 on bad usage.

The websocket carries the header X-Livegate-Probe: 1. An app that follows the app contract does not
count such a connection as the session's client; one that does not sees a client connect and leave,
which starts the session's resume window (and, once it runs out, ends the session).`)
	fs.StringVar(&o.signaling, "signaling", "", "signaling websocket URL, wss://HOST:PORT/sign_in (peer_id and version=2 are added when missing)")
	fs.StringVar(&o.sessionID, "session-id", "", "session id sent as the x-nv-sessionid.<id> subprotocol (required with --signaling)")
	fs.Var(&o.media, "media", "public media address udp://HOST:PORT; repeat for each media port")
	fs.BoolVar(&o.insecure, "insecure", false, "do not verify the edge's TLS certificate")
	fs.IntVar(&o.count, "count", 100, "RTP packets to send per media address")
	fs.Float64Var(&o.rate, "rate", 50, "RTP packets per second")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "limit for the websocket handshake and for each DTLS handshake")
	fs.Float64Var(&o.maxLoss, "max-loss", 0.1, "highest media loss fraction (0-1) that still passes")
	if _, err := l.Load(fs, args, nil); err != nil {
		return nil, err
	}
	switch {
	case o.signaling == "" && len(o.media) == 0:
		return nil, errors.New("nothing to probe: give --signaling, --media or both")
	case o.signaling != "" && o.sessionID == "":
		return nil, errors.New("--signaling needs --session-id")
	case o.count < 1 || o.count > 1_000_000:
		return nil, fmt.Errorf("--count %d: want 1 to 1000000", o.count)
	case !(o.rate > 0 && o.rate <= 100_000):
		return nil, fmt.Errorf("--rate %g: want more than 0 and at most 100000", o.rate)
	case o.timeout <= 0:
		return nil, fmt.Errorf("--timeout %s must be positive", o.timeout)
	case o.maxLoss < 0 || o.maxLoss > 1:
		return nil, fmt.Errorf("--max-loss %g: want 0 to 1", o.maxLoss)
	}
	if o.sessionID != "" {
		if err := sessionid.Validate(o.sessionID); err != nil {
			return nil, fmt.Errorf("--session-id: %w", err)
		}
	}
	if o.signaling != "" {
		if _, err := probe.SignalingURL(o.signaling); err != nil {
			return nil, fmt.Errorf("--signaling: %w", err)
		}
	}
	return &o, nil
}

// ProbeCommand is `livegate-edgeproxy probe`: it parses args, runs the checks and writes a report
// to stdout and failures to stderr. It returns probeOK, probeFailed or probeUsage.
func ProbeCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseProbe(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return probeOK
	}
	if err != nil {
		settingsload.Report(stderr, "livegate-edgeproxy probe", err)
		return probeUsage
	}
	failed, total := 0, 0
	if o.signaling != "" {
		total++
		sctx, cancel := context.WithTimeout(ctx, o.timeout)
		took, err := probe.Signaling(sctx, o.signaling, o.sessionID, o.insecure)
		cancel()
		var verify *tls.CertificateVerificationError
		switch {
		case err != nil && errors.As(err, &verify) && !o.insecure:
			failed++
			fmt.Fprintf(stdout, "FAIL %v\n     (an edge with a self-signed certificate needs --insecure)\n", err)
		case err != nil:
			failed++
			fmt.Fprintf(stdout, "FAIL %v\n", err)
		default:
			fmt.Fprintf(stdout, "ok   signaling %s: 101 Switching Protocols in %s, subprotocol %s%s echoed\n",
				o.signaling, took.Round(time.Microsecond), probe.SubprotocolPrefix, o.sessionID)
		}
	}
	for _, addr := range o.media {
		total++
		rep, err := dtlssrtp.Probe(ctx, addr,
			dtlssrtp.WithCount(o.count), dtlssrtp.WithRate(o.rate), dtlssrtp.WithTimeout(o.timeout))
		switch {
		case err != nil:
			failed++
			fmt.Fprintf(stdout, "FAIL %v\n", err)
		case rep.Loss > o.maxLoss:
			failed++
			fmt.Fprintf(stdout, "FAIL media %s: loss %.2f%% above --max-loss %.2f%%\n%s", addr, rep.Loss*100, o.maxLoss*100, rep)
		default:
			fmt.Fprintf(stdout, "ok   %s", rep)
		}
	}
	if failed > 0 {
		fmt.Fprintf(stderr, "livegate-edgeproxy probe: %d of %d checks failed\n", failed, total)
		return probeFailed
	}
	fmt.Fprintf(stdout, "all %d checks passed\n", total)
	return probeOK
}
