package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
	"github.com/rs/zerolog"
)

// mediaPort is the UDP port of a --media-addr.
func mediaPort(addr string) (int, error) {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 {
		return 0, fmt.Errorf("port %q: want 1-65535", p)
	}
	return port, nil
}

// mediaServer owns what every session shares: the one UDP port (an ICE mux, demultiplexed by ICE
// username) and the video track, written once for every peer it is added to.
type mediaServer struct {
	mux      ice.UDPMux
	port     int
	loopback bool
	track    *webrtc.TrackLocalStaticSample
	video    *video
	log      zerolog.Logger
}

func newMedia(addr string, v *video, log zerolog.Logger) (*mediaServer, error) {
	port, err := mediaPort(addr)
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(addr)
	m := &mediaServer{port: port, video: v, log: log}
	if ip, err := netip.ParseAddr(host); err == nil && !ip.IsUnspecified() {
		conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(port))))
		if err != nil {
			return nil, fmt.Errorf("listen on udp %s: %w", addr, err)
		}
		m.mux = ice.NewUDPMuxDefault(ice.UDPMuxParams{UDPConn: conn})
		m.loopback = ip.IsLoopback()
	} else if host == "" || ip.IsUnspecified() {
		if m.mux, err = ice.NewMultiUDPMuxFromPort(port, ice.UDPMuxFromPortWithNetworks(ice.NetworkTypeUDP4)); err != nil {
			return nil, fmt.Errorf("listen on udp port %d: %w", port, err)
		}
	} else {
		return nil, fmt.Errorf("--media-addr %q: want an IP address or none", addr)
	}
	m.track, err = webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8}, "video", "livegate-streamapp")
	if err != nil {
		_ = m.mux.Close()
		return nil, fmt.Errorf("video track: %w", err)
	}
	return m, nil
}

func (m *mediaServer) close() { _ = m.mux.Close() }

// play writes the video's frames in a loop at its frame rate until ctx ends. A track with no
// peer drops them.
func (m *mediaServer) play(ctx context.Context) {
	tick := time.NewTicker(m.video.interval)
	defer tick.Stop()
	for i := 0; ; i = (i + 1) % len(m.video.frames) {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := m.track.WriteSample(media.Sample{Data: m.video.frames[i], Duration: m.video.interval}); err != nil {
			m.log.Debug().Err(err).Msg("write video frame")
		}
	}
}

// candidate is where a browser reaches this app: the edge's public IP and the session's public
// UDP port, DNATed to the media port.
type candidate struct {
	ip   string
	port int
}

// newPeer makes an ICE-lite peer connection whose only candidate is c, with the video track.
func (m *mediaServer) newPeer(c candidate) (*webrtc.PeerConnection, error) {
	var se webrtc.SettingEngine
	se.SetLite(true)
	se.SetICEUDPMux(m.mux)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetIncludeLoopbackCandidate(m.loopback)
	// Whatever address the mux listens on, the candidate says the edge's public IP and port: the
	// browser cannot reach the app's own address, only the edge's DNAT.
	if err := se.SetICEAddressRewriteRules(webrtc.ICEAddressRewriteRule{
		External: []string{c.ip}, AsCandidateType: webrtc.ICECandidateTypeHost, Mode: webrtc.ICEAddressRewriteReplace,
		Networks: []webrtc.NetworkType{webrtc.NetworkTypeUDP4}, NewPort: c.port,
	}); err != nil {
		return nil, fmt.Errorf("candidate %s:%d: %w", c.ip, c.port, err)
	}
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		return nil, fmt.Errorf("codecs: %w", err)
	}
	ir := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(me, ir); err != nil {
		return nil, fmt.Errorf("interceptors: %w", err)
	}
	api := webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, fmt.Errorf("peer connection: %w", err)
	}
	sender, err := pc.AddTrack(m.track)
	if err != nil {
		_ = pc.Close()
		return nil, fmt.Errorf("add video track: %w", err)
	}
	// RTCP must be read for the interceptors (NACK, reports) to work.
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := sender.Read(buf); err != nil {
				return
			}
		}
	}()
	return pc, nil
}
