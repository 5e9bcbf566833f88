package dtlssrtp

import (
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"strings"

	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/crypto/selfsign"
	"github.com/pion/srtp/v3"
)

// profiles are offered in this order: AEAD first, as browsers prefer, then the profile every
// WebRTC stack must support.
var profiles = []dtls.SRTPProtectionProfile{
	dtls.SRTP_AEAD_AES_128_GCM,
	dtls.SRTP_AES128_CM_HMAC_SHA1_80,
}

var profileNames = map[dtls.SRTPProtectionProfile]string{
	dtls.SRTP_AEAD_AES_128_GCM:       "SRTP_AEAD_AES_128_GCM",
	dtls.SRTP_AES128_CM_HMAC_SHA1_80: "SRTP_AES128_CM_HMAC_SHA1_80",
}

// replayWindow is the SRTP/SRTCP replay window on the receiving side, wide enough for reordering
// at the probe rates used.
const replayWindow = 256

// srtpKeys holds one association's SRTP contexts: local encrypts what we send, remote decrypts
// what the peer sends. Contexts are not safe for concurrent use; callers serialise.
type srtpKeys struct {
	local, remote *srtp.Context
	profile       string
	peerCert      []byte
}

// keysFromDTLS derives the SRTP contexts of a finished handshake from the DTLS exporter
// (RFC 5764 section 4.2).
func keysFromDTLS(conn *dtls.Conn, isClient bool) (*srtpKeys, error) {
	selected, ok := conn.SelectedSRTPProtectionProfile()
	if !ok {
		return nil, fmt.Errorf("peer negotiated no SRTP protection profile (use_srtp extension missing)")
	}
	name, ok := profileNames[selected]
	if !ok {
		return nil, fmt.Errorf("peer selected SRTP protection profile %#04x, which was not offered", uint16(selected))
	}
	state, ok := conn.ConnectionState()
	if !ok {
		return nil, fmt.Errorf("read DTLS connection state")
	}
	cfg := srtp.Config{Profile: srtp.ProtectionProfile(selected)}
	if err := cfg.ExtractSessionKeysFromDTLS(&state, isClient); err != nil {
		return nil, fmt.Errorf("export SRTP keys: %w", err)
	}
	local, err := srtp.CreateContext(cfg.Keys.LocalMasterKey, cfg.Keys.LocalMasterSalt, cfg.Profile)
	if err != nil {
		return nil, fmt.Errorf("local SRTP context: %w", err)
	}
	remote, err := srtp.CreateContext(cfg.Keys.RemoteMasterKey, cfg.Keys.RemoteMasterSalt, cfg.Profile,
		srtp.SRTPReplayProtection(replayWindow), srtp.SRTCPReplayProtection(replayWindow))
	if err != nil {
		return nil, fmt.Errorf("remote SRTP context: %w", err)
	}
	k := &srtpKeys{local: local, remote: remote, profile: name}
	if len(state.PeerCertificates) > 0 {
		k.peerCert = state.PeerCertificates[0]
	}
	return k, nil
}

// NewCertificate returns a fresh self-signed ECDSA P-256 certificate, the kind WebRTC endpoints
// use: the peer trusts it by fingerprint, not by chain.
func NewCertificate() (tls.Certificate, error) {
	cert, err := selfsign.GenerateSelfSigned()
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate self-signed certificate: %w", err)
	}
	return cert, nil
}

// Fingerprint is the SHA-256 fingerprint of a DER certificate as an SDP a=fingerprint line writes
// it: upper-case hex pairs joined by colons.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	var b strings.Builder
	for i, c := range sum {
		if i > 0 {
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%02X", c)
	}
	return b.String()
}
