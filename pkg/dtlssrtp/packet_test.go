package dtlssrtp

import (
	"errors"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		want kind
	}{
		{"empty", nil, kindOther},
		{"one byte", []byte{22}, kindOther},
		{"stun", []byte{0, 1}, kindOther},
		{"dtls handshake", []byte{22, 254}, kindDTLS},
		{"dtls alert", []byte{21, 254}, kindDTLS},
		{"rtp pt 96", []byte{0x80, 96}, kindRTP},
		{"rtp marker pt 96", []byte{0x80, 0x80 | 96}, kindRTP},
		{"rtcp sr", []byte{0x80, 200}, kindRTCP},
		{"rtcp bye", []byte{0x81, 203}, kindRTCP},
		{"turn channel", []byte{64, 0}, kindOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := classify(tt.b); got != tt.want {
				t.Errorf("classify(%v) = %v, want %v", tt.b, got, tt.want)
			}
		})
	}
}

func TestIsClientHello(t *testing.T) {
	hello := make([]byte, 14)
	hello[0] = 22
	hello[13] = 1
	finished := append([]byte(nil), hello...)
	finished[4] = 1 // epoch 1: encrypted
	serverHello := append([]byte(nil), hello...)
	serverHello[13] = 2
	for name, tt := range map[string]struct {
		b    []byte
		want bool
	}{
		"client hello":  {hello, true},
		"epoch 1":       {finished, false},
		"server hello":  {serverHello, false},
		"too short":     {hello[:13], false},
		"not handshake": {append([]byte{21}, hello[1:]...), false},
	} {
		if got := isClientHello(tt.b); got != tt.want {
			t.Errorf("%s: isClientHello = %v, want %v", name, got, tt.want)
		}
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	b := make([]byte, 40)
	putPayload(b, 4242, 1234567*time.Microsecond)
	index, sentAt, err := parsePayload(b)
	if err != nil || index != 4242 || sentAt != 1234567*time.Microsecond {
		t.Fatalf("parsePayload = %d, %s, %v", index, sentAt, err)
	}
	if _, _, err := parsePayload(b[:15]); !errors.Is(err, errNotProbePayload) {
		t.Errorf("short payload: err = %v, want errNotProbePayload", err)
	}
	b[0] ^= 0xff
	if _, _, err := parsePayload(b); !errors.Is(err, errNotProbePayload) {
		t.Errorf("bad magic: err = %v, want errNotProbePayload", err)
	}
}

func TestRTPUnits(t *testing.T) {
	for d, want := range map[time.Duration]uint32{
		0:                       0,
		time.Millisecond:        90,
		time.Second:             90000,
		48 * time.Hour:          uint32(uint64(48*3600*90000) % (1 << 32)),
		time.Second / 90000 * 2: 1,
	} {
		if got := rtpUnits(d); got != want {
			t.Errorf("rtpUnits(%s) = %d, want %d", d, got, want)
		}
	}
}

func TestNTPTime(t *testing.T) {
	ts := time.Date(2026, 1, 2, 3, 4, 5, int(time.Second/2), time.UTC)
	got := ntpTime(ts)
	if secs := got >> 32; secs != uint64(ts.Unix()+ntpEpochOffset) {
		t.Errorf("seconds = %d, want %d", secs, ts.Unix()+ntpEpochOffset)
	}
	if frac := uint32(got); frac != 1<<31 {
		t.Errorf("fraction = %#x, want 0x80000000", frac)
	}
}
