package dtlssrtp

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	tests := []struct {
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{ms(7), 50, 7 * time.Millisecond},
		{ms(7), 99, 7 * time.Millisecond},
		{ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{ms(1, 2, 3, 4), 99, 4 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 90, 9 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 1, 1 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := percentile(tt.sorted, tt.p); got != tt.want {
			t.Errorf("percentile(%v, %g) = %s, want %s", tt.sorted, tt.p, got, tt.want)
		}
	}
}

func TestRecorderCounts(t *testing.T) {
	r := newRecorder(5)
	r.echo(0, 0, 3*time.Millisecond, 0)
	r.echo(1, 10*time.Millisecond, 11*time.Millisecond, 900)
	r.echo(1, 10*time.Millisecond, 12*time.Millisecond, 900) // duplicate
	r.echo(9, 0, time.Millisecond, 0)                        // not ours
	r.echo(3, 30*time.Millisecond, 32*time.Millisecond, 2700)
	r.senderReports = 2
	var rep Report
	r.fill(&rep, 5)
	if rep.Sent != 5 || rep.Received != 3 || rep.Duplicates != 1 || rep.SenderReports != 2 {
		t.Errorf("counts = sent %d received %d duplicates %d srs %d, want 5 3 1 2",
			rep.Sent, rep.Received, rep.Duplicates, rep.SenderReports)
	}
	if math.Abs(rep.Loss-0.4) > 1e-9 {
		t.Errorf("loss = %g, want 0.4", rep.Loss)
	}
	if rep.RTTMin != time.Millisecond || rep.RTTp50 != 2*time.Millisecond || rep.RTTMax != 3*time.Millisecond {
		t.Errorf("rtt min/p50/max = %s/%s/%s, want 1ms/2ms/3ms", rep.RTTMin, rep.RTTp50, rep.RTTMax)
	}
}

func TestRecorderJitter(t *testing.T) {
	tests := []struct {
		name string
		// delays are the echo path's one-way delays, one packet every 20ms.
		delays []time.Duration
		want   time.Duration
	}{
		{"steady", []time.Duration{5 * time.Millisecond, 5 * time.Millisecond, 5 * time.Millisecond}, 0},
		{"one step", []time.Duration{5 * time.Millisecond, 21 * time.Millisecond}, time.Millisecond},
		{"two steps", []time.Duration{0, 16 * time.Millisecond, 0}, 16*time.Millisecond/16 + (16*time.Millisecond-16*time.Millisecond/16)/16},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRecorder(len(tt.delays))
			const base = 123456789
			for i, d := range tt.delays {
				sent := time.Duration(i) * 20 * time.Millisecond
				r.echo(uint32(i), sent, sent+d, base+rtpUnits(sent))
			}
			var rep Report
			r.fill(&rep, len(tt.delays))
			if diff := rep.Jitter - tt.want; diff < -time.Microsecond || diff > time.Microsecond {
				t.Errorf("jitter = %s, want %s", rep.Jitter, tt.want)
			}
		})
	}
}

func TestRecorderJitterAcrossTimestampWrap(t *testing.T) {
	r := newRecorder(3)
	start := uint32(math.MaxUint32 - 900)
	for i := range 3 {
		sent := time.Duration(i) * 20 * time.Millisecond
		r.echo(uint32(i), sent, sent+time.Millisecond, start+rtpUnits(sent))
	}
	var rep Report
	r.fill(&rep, 3)
	if rep.Jitter != 0 {
		t.Errorf("jitter = %s across a wrap of steady packets, want 0", rep.Jitter)
	}
}

func TestReportString(t *testing.T) {
	rep := Report{
		Addr: "198.18.0.1:10500", Profile: "SRTP_AEAD_AES_128_GCM", PeerFingerprint: "AB:CD",
		Handshake: 3 * time.Millisecond, Sent: 100, Received: 99, Loss: 0.01,
		RTTMin: time.Millisecond, RTTp50: 2 * time.Millisecond, RTTp99: 5 * time.Millisecond, RTTMax: 6 * time.Millisecond,
		Jitter: 250 * time.Microsecond, SenderReports: 2, Elapsed: 2100 * time.Millisecond,
	}
	s := rep.String()
	for _, want := range []string{
		"media 198.18.0.1:10500", "SRTP_AEAD_AES_128_GCM", "sha-256 AB:CD", "sent 100, echoed 99, lost 1 (1.00%)",
		"p50 2ms, p99 5ms", "jitter: 250µs", "sender reports: 2", "elapsed: 2.1s",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
}
