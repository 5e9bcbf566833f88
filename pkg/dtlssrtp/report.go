package dtlssrtp

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Report is what one probe measured.
type Report struct {
	// Addr is the address probed.
	Addr string
	// Profile is the SRTP protection profile the DTLS handshake negotiated.
	Profile string
	// PeerFingerprint is the SHA-256 fingerprint of the responder's certificate, written as in an
	// SDP a=fingerprint line.
	PeerFingerprint string
	// Handshake is how long the DTLS handshake took.
	Handshake time.Duration
	// Sent and Received count probe packets sent and distinct echoes received; Duplicates counts
	// echoes received more than once.
	Sent, Received, Duplicates int
	// Loss is the fraction (0..1) of sent packets whose echo never came back.
	Loss float64
	// Round trip times of the echoes: nearest-rank percentiles.
	RTTMin, RTTp50, RTTp99, RTTMax time.Duration
	// Jitter is the RFC 3550 interarrival jitter of the echoes (responder to prober).
	Jitter time.Duration
	// SenderReports counts the RTCP sender reports received from the responder.
	SenderReports int
	// Elapsed is the whole probe, handshake included.
	Elapsed time.Duration
}

// String renders the report for people, one aspect per line.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "media %s: DTLS-SRTP handshake %s, profile %s\n", r.Addr, fmtDuration(r.Handshake), r.Profile)
	if r.PeerFingerprint != "" {
		fmt.Fprintf(&b, "  responder certificate: sha-256 %s\n", r.PeerFingerprint)
	}
	fmt.Fprintf(&b, "  packets: sent %d, echoed %d, lost %d (%.2f%%)", r.Sent, r.Received, r.Sent-r.Received, r.Loss*100)
	if r.Duplicates > 0 {
		fmt.Fprintf(&b, ", duplicates %d", r.Duplicates)
	}
	b.WriteString("\n")
	if r.Received > 0 {
		fmt.Fprintf(&b, "  round trip: min %s, p50 %s, p99 %s, max %s\n",
			fmtDuration(r.RTTMin), fmtDuration(r.RTTp50), fmtDuration(r.RTTp99), fmtDuration(r.RTTMax))
		fmt.Fprintf(&b, "  jitter: %s (RFC 3550, echo path)\n", fmtDuration(r.Jitter))
	}
	fmt.Fprintf(&b, "  RTCP sender reports: %d\n", r.SenderReports)
	fmt.Fprintf(&b, "  elapsed: %s\n", fmtDuration(r.Elapsed))
	return b.String()
}

func fmtDuration(d time.Duration) string {
	if d >= time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Microsecond).String()
}

// recorder accumulates echoes; it is pure bookkeeping, fed with times relative to the probe's
// start, so it can be tested without a network or a clock.
type recorder struct {
	count         int
	seen          []bool
	rtts          []time.Duration
	duplicates    int
	foreign       int
	senderReports int

	// jitter is RFC 3550 A.8's estimate, in RTP clock units.
	jitter      float64
	lastTransit int32
	haveTransit bool
}

func newRecorder(count int) *recorder {
	return &recorder{count: count, seen: make([]bool, count), rtts: make([]time.Duration, 0, count)}
}

// echo records one echoed probe packet: its index, when it was sent and when its echo arrived (both
// relative to the probe start) and the RTP timestamp the responder stamped on the echo.
func (r *recorder) echo(index uint32, sentAt, arrival time.Duration, echoTimestamp uint32) {
	if int64(index) >= int64(r.count) {
		r.foreign++
		return
	}
	if r.seen[index] {
		r.duplicates++
		return
	}
	r.seen[index] = true
	r.rtts = append(r.rtts, max(arrival-sentAt, 0))

	// Transit is taken modulo 2^32 like the timestamps; the difference of two transits is small,
	// so int32 arithmetic recovers it across a wrap.
	transit := int32(rtpUnits(arrival) - echoTimestamp)
	if r.haveTransit {
		d := float64(transit - r.lastTransit)
		r.jitter += (math.Abs(d) - r.jitter) / 16
	}
	r.lastTransit, r.haveTransit = transit, true
}

// received is how many distinct probe packets came back.
func (r *recorder) received() int { return len(r.rtts) }

func (r *recorder) fill(rep *Report, sent int) {
	rep.Sent = sent
	rep.Received = r.received()
	rep.Duplicates = r.duplicates
	if sent > 0 {
		rep.Loss = float64(sent-rep.Received) / float64(sent)
	}
	rep.SenderReports = r.senderReports
	rep.Jitter = time.Duration(r.jitter * float64(time.Second) / rtpClockRate)
	if len(r.rtts) == 0 {
		return
	}
	sorted := slices.Clone(r.rtts)
	slices.Sort(sorted)
	rep.RTTMin = sorted[0]
	rep.RTTMax = sorted[len(sorted)-1]
	rep.RTTp50 = percentile(sorted, 50)
	rep.RTTp99 = percentile(sorted, 99)
}

// percentile is the nearest-rank percentile p (0 < p <= 100) of sorted, which must not be empty.
func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}
