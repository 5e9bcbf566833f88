package desired

import (
	"net/netip"
	"slices"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/routes"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Endpoint holds the fields of a livegate_endpoints value that this edge writes and compares.
// What this edge writes shares its slices with the served route.
type Endpoint struct {
	Instance, Session, Edge, Host, IP string
	SignalingPort                     uint16
	Ports                             []uint16
	Media                             []netip.AddrPort
	Turn                              *livegatev1.TurnRelay
	// unreadable marks a value whose ports or backends do not parse: it equals nothing.
	unreadable bool
}

// portFromWire reads a port the protocol carries as uint32.
func portFromWire(p uint32) (uint16, bool) {
	if p == 0 || p > 65535 {
		return 0, false
	}
	return uint16(p), true
}

// endpointOf reads what a livegate_endpoints value publishes.
func endpointOf(pb *livegatev1.Endpoint) *Endpoint {
	p := &Endpoint{
		Instance: pb.GetInstanceId(), Session: pb.GetSessionId(), Edge: pb.GetEdgeId(), Host: pb.GetPublicHost(),
		IP: pb.GetPublicIp(), Turn: pb.GetTurn(),
	}
	if pb.GetSignalingPort() != 0 {
		port, ok := portFromWire(pb.GetSignalingPort())
		p.unreadable = !ok
		p.SignalingPort = port
	}
	for _, wp := range pb.GetPublicUdpPorts() {
		port, ok := portFromWire(wp)
		p.unreadable = p.unreadable || !ok
		p.Ports = append(p.Ports, port)
	}
	for _, m := range pb.GetMediaBackends() {
		ap, err := netip.ParseAddrPort(m)
		p.unreadable = p.unreadable || err != nil
		p.Media = append(p.Media, ap)
	}
	return p
}

// Proto is the livegate_endpoints value of p, assigned at.
func (p *Endpoint) Proto(at time.Time) *livegatev1.Endpoint {
	ep := &livegatev1.Endpoint{
		InstanceId: p.Instance, SessionId: p.Session, EdgeId: p.Edge, PublicHost: p.Host, PublicIp: p.IP,
		SignalingPort: uint32(p.SignalingPort), AssignedAt: timestamppb.New(at), Turn: p.Turn,
	}
	for _, m := range p.Media {
		ep.MediaBackends = append(ep.MediaBackends, m.String())
	}
	for _, port := range p.Ports {
		ep.PublicUdpPorts = append(ep.PublicUdpPorts, uint32(port))
	}
	return ep
}

func decodeEndpoint(e Entry) endpoint {
	var pb livegatev1.Endpoint
	if err := wire.Unmarshal(e.Value, &pb); err != nil {
		// An endpoint nobody can read belongs to nobody alive: the pool may claim it over.
		return endpoint{Endpoint: routes.Endpoint{Revision: e.Revision}}
	}
	pub := endpointOf(&pb)
	ports := make([]uint16, 0, len(pub.Ports))
	for _, p := range pub.Ports {
		if p != 0 {
			ports = append(ports, p)
		}
	}
	return endpoint{Endpoint: routes.Endpoint{EdgeID: pb.GetEdgeId(), Revision: e.Revision, Ports: ports}, pub: pub}
}

// endpointFor is what this edge publishes for w, with its TURN credential.
func (s *State) endpointFor(w Served, turn *livegatev1.TurnRelay) *Endpoint {
	return &Endpoint{
		Instance: w.Route.Key, Session: w.Route.SessionID, Edge: s.cfg.EdgeID, Host: s.cfg.PublicHost,
		IP: s.cfg.PublicIP, SignalingPort: s.cfg.SignalingPort, Ports: w.PublicPorts(), Media: w.Route.Media, Turn: turn,
	}
}

// publishes reports whether p is what this edge publishes for w, without building the latter for
// every served route on every plan.
func (s *State) publishes(p *Endpoint, w Served) bool {
	return p != nil && !p.unreadable && p.Instance == w.Route.Key && p.Session == w.Route.SessionID &&
		p.Edge == s.cfg.EdgeID && p.Host == s.cfg.PublicHost && p.IP == s.cfg.PublicIP && p.SignalingPort == s.cfg.SignalingPort &&
		slices.Equal(p.Ports, w.PublicPorts()) && slices.Equal(p.Media, w.Route.Media) && s.turnCurrent(w.Route.SessionID, p.Turn)
}

// credentials is the TURN credential w's endpoint publishes now (nil without a relay).
func (s *State) credentials(w Served, now time.Time) *livegatev1.TurnRelay {
	if s.relay == nil {
		return nil
	}
	t := s.relay.Credentials(w.Route.SessionID, now)
	s.turnCurrent(w.Route.SessionID, t)
	return t
}

// turnCurrent reports whether a published TURN credential still stands, and notes when it is due
// for renewal.
func (s *State) turnCurrent(session string, t *livegatev1.TurnRelay) bool {
	if s.relay == nil {
		return t == nil
	}
	ok, renew := s.relay.Current(session, t, s.now)
	if ok {
		s.turnRenew = earliest(s.turnRenew, renew)
	}
	return ok
}
