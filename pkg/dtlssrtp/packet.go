// Package dtlssrtp proves a WebRTC-style media path end to end: a Responder stands in for an app's
// media server (a DTLS server with the use_srtp extension that echoes SRTP and sends SRTCP sender
// reports) and Probe handshakes with it, sends RTP at a fixed rate and measures round trip, loss
// and jitter. Both sides key SRTP from the DTLS exporter (RFC 5764) and share one UDP port between
// DTLS and SRTP/SRTCP, demultiplexed by the first byte as browsers do (RFC 7983).
package dtlssrtp

import (
	"encoding/binary"
	"errors"
	"time"
)

// kind is what a datagram on a DTLS-SRTP port carries.
type kind int

const (
	kindOther kind = iota
	kindDTLS
	kindRTP
	kindRTCP
)

// classify demultiplexes by the first byte (RFC 7983) and, for RTP/RTCP, by the second: RTCP packet
// types 192-223 fall where an RTP marker bit and payload type cannot legally be (RFC 5761).
func classify(b []byte) kind {
	if len(b) < 2 {
		return kindOther
	}
	switch {
	case b[0] >= 20 && b[0] <= 63:
		return kindDTLS
	case b[0] >= 128 && b[0] <= 191:
		if b[1] >= 192 && b[1] <= 223 {
			return kindRTCP
		}
		return kindRTP
	}
	return kindOther
}

// isClientHello reports whether b starts with an unencrypted (epoch 0) DTLS handshake record
// holding a ClientHello: the only datagram that may open a new association.
func isClientHello(b []byte) bool {
	const recordHeader = 13
	return len(b) > recordHeader && b[0] == 22 && b[3] == 0 && b[4] == 0 && b[recordHeader] == 1
}

// The probe payload carries what the prober needs to match an echo to its send: a magic number,
// the probe's packet index and the send time as an offset from the probe's start (monotonic, so
// wall clock steps do not skew the round trip).
const (
	payloadMagic   = 0x4c475052 // "LGPR"
	payloadMinSize = 16
)

var errNotProbePayload = errors.New("not a probe payload")

func putPayload(b []byte, index uint32, sentAt time.Duration) {
	binary.BigEndian.PutUint32(b[0:4], payloadMagic)
	binary.BigEndian.PutUint32(b[4:8], index)
	binary.BigEndian.PutUint64(b[8:16], uint64(sentAt))
}

func parsePayload(b []byte) (index uint32, sentAt time.Duration, err error) {
	if len(b) < payloadMinSize || binary.BigEndian.Uint32(b[0:4]) != payloadMagic {
		return 0, 0, errNotProbePayload
	}
	return binary.BigEndian.Uint32(b[4:8]), time.Duration(binary.BigEndian.Uint64(b[8:16])), nil
}

// rtpClockRate is the RTP timestamp rate both sides use (the video clock).
const rtpClockRate = 90000

// rtpUnits converts d to RTP clock ticks, wrapping at 2^32 as RTP timestamps do; microsecond
// arithmetic keeps the product inside int64 for any realistic session length.
func rtpUnits(d time.Duration) uint32 {
	return uint32(d.Microseconds() * rtpClockRate / 1_000_000)
}
