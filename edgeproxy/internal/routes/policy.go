// Package routes is the edge's pure routing logic: validating route values, deciding which routes
// this edge serves or may claim, diffing the desired map against HAProxy's, and the load-based
// claim delay. It does no I/O.
package routes

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/pkg/commalist"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/logging"
	"github.com/livegate/livegate/pkg/sessionid"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// ParsePrefixes reads a comma-separated list of CIDRs.
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range commalist.Split(s) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("backend CIDR %q: %w", f, err)
		}
		out = append(out, p.Masked())
	}
	if len(out) == 0 {
		return nil, errors.New("no backend CIDRs")
	}
	return out, nil
}

// Policy says which backends a route may name.
type Policy struct {
	BackendCIDRs []netip.Prefix
	BackendPorts portalloc.Range
	// MaxMedia is the most media backends one route (one instance: its route is one key) may
	// name, each of which takes a public UDP port; zero means DefaultMaxMedia.
	MaxMedia int
}

// DefaultMaxMedia is the default cap of media backends per route: a WebRTC session needs one or
// two, and a cap keeps one route (or one compromised container) from taking the edge's ports.
const DefaultMaxMedia = 4

// Route is a validated route value.
type Route struct {
	// Key is the KV key, the instance id.
	Key       string
	SessionID string
	Signaling netip.AddrPort
	Media     []netip.AddrPort
	EdgeID    string
	Pool      string
	Revision  uint64
	// LeaseTTL is how long the key lives without renewal (zero: no lease).
	LeaseTTL time.Duration
}

// Parse decodes a livegate_routes value and validates it. The error names the field and says
// what is wrong with it.
func (p Policy) Parse(key string, value []byte, revision uint64) (Route, error) {
	if err := events.ValidateToken("key (instance id)", key); err != nil {
		return Route{}, err
	}
	var pb livegatev1.Route
	if err := wire.Unmarshal(value, &pb); err != nil {
		return Route{}, fmt.Errorf("value: %w", err)
	}
	r := Route{Key: key, SessionID: pb.GetSessionId(), EdgeID: pb.GetEdgeId(), Pool: pb.GetPool(), Revision: revision,
		LeaseTTL: max(pb.GetLeaseTtl().AsDuration(), 0)}
	if pb.GetInstanceId() != "" && pb.GetInstanceId() != key {
		return Route{}, fmt.Errorf("instance_id %q: differs from the key %q", logging.Clip(pb.GetInstanceId()), key)
	}
	if err := sessionid.Validate(r.SessionID); err != nil {
		return Route{}, fmt.Errorf("session_id: %w", err)
	}
	if r.EdgeID == "" && r.Pool == "" {
		return Route{}, errors.New("edge_id and pool: a route names an edge or a pool")
	}
	if r.EdgeID != "" {
		if err := events.ValidateToken("edge_id", r.EdgeID); err != nil {
			return Route{}, err
		}
	}
	if r.Pool != "" {
		if err := events.ValidateToken("pool", r.Pool); err != nil {
			return Route{}, err
		}
	}
	var err error
	if r.Signaling, err = p.backend(pb.GetSignalingBackend()); err != nil {
		return Route{}, fmt.Errorf("signaling_backend: %w", err)
	}
	maxMedia := p.MaxMedia
	if maxMedia <= 0 {
		maxMedia = DefaultMaxMedia
	}
	if n := len(pb.GetMediaBackends()); n > maxMedia {
		return Route{}, fmt.Errorf("media_backends: %d backends, more than the %d a route may name", n, maxMedia)
	}
	for i, m := range pb.GetMediaBackends() {
		ap, err := p.backend(m)
		if err != nil {
			return Route{}, fmt.Errorf("media_backends[%d]: %w", i, err)
		}
		if j := slices.Index(r.Media, ap); j >= 0 {
			// Each would take a public port of its own for the same backend.
			return Route{}, fmt.Errorf("media_backends[%d]: %s repeats media_backends[%d]", i, ap, j)
		}
		r.Media = append(r.Media, ap)
	}
	return r, nil
}

func (p Policy) backend(s string) (netip.AddrPort, error) {
	if len(s) > 64 {
		return netip.AddrPort{}, fmt.Errorf("%d characters is too long for ip:port", len(s))
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not ip:port", s)
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("%q: zoned addresses are not allowed", s)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	inside := false
	for _, c := range p.BackendCIDRs {
		if c.Contains(ap.Addr()) {
			inside = true
			break
		}
	}
	if !inside {
		return netip.AddrPort{}, fmt.Errorf("address %s is outside the allowed backend CIDRs", ap.Addr())
	}
	if !p.BackendPorts.Contains(ap.Port()) {
		return netip.AddrPort{}, fmt.Errorf("port %d is outside the allowed range %s", ap.Port(), p.BackendPorts)
	}
	return ap, nil
}
