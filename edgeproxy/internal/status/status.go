// Package status is the report behind `livegate-edgeproxy status`: what the edges, routes and endpoints in NATS say,
// joined into one report (which edge serves which route, on which public ports, which routes are
// refused and why, how full each edge's port pool is), as a table or as JSON.
package status

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// Snapshot is what was read from NATS at one time. Undecodable values are kept as errors, so a bad
// key shows instead of vanishing.
type Snapshot struct {
	At        time.Time
	Edges     map[string]*livegatev1.EdgeStatus
	Routes    map[string]*livegatev1.Route
	Endpoints map[string]*livegatev1.Endpoint
	// Refusals holds the latest route_refused event about each route key, if any.
	Refusals map[string]*livegatev1.Event
	// Invalid maps a key of livegate_routes to why its value cannot be read.
	Invalid map[string]string
}

// Report is the joined view.
type Report struct {
	At     time.Time     `json:"at"`
	Edges  []EdgeReport  `json:"edges"`
	Routes []RouteReport `json:"routes"`
}

// EdgeReport is one edge's heartbeat.
type EdgeReport struct {
	EdgeID     string `json:"edgeId"`
	Pool       string `json:"pool"`
	PublicHost string `json:"publicHost"`
	Version    string `json:"version"`
	// Healthy is false when the heartbeat is older than the staleness bound.
	Healthy          bool      `json:"healthy"`
	Heartbeat        time.Time `json:"heartbeat"`
	HeartbeatAgeSecs float64   `json:"heartbeatAgeSeconds"`
	Routes           uint32    `json:"routes"`
	Ports            PortUse   `json:"ports"`
	// Draining: the edge takes no new session; at DrainDeadline (when set) it hands its pool
	// routes to the pool's other edges. Claiming: it takes new pool routes (not draining, and
	// more free ports than its reserve).
	Draining      bool       `json:"draining"`
	DrainDeadline *time.Time `json:"drainDeadline,omitempty"`
	Claiming      bool       `json:"claiming"`
}

// PortUse is an edge's public UDP port pool.
type PortUse struct {
	Capacity uint32 `json:"capacity"`
	Free     uint32 `json:"free"`
	// InUse counts assigned and quarantined ports.
	InUse uint32 `json:"inUse"`
}

// Route states.
const (
	StateServed  = "served"
	StateRefused = "refused"
	StateWaiting = "waiting"
	StateInvalid = "invalid"
)

// RouteReport is one route and what became of it.
type RouteReport struct {
	InstanceID       string         `json:"instanceId"`
	SessionID        string         `json:"sessionId"`
	Pool             string         `json:"pool"`
	WantedEdge       string         `json:"wantedEdgeId"`
	SignalingBackend string         `json:"signalingBackend"`
	MediaBackends    []string       `json:"mediaBackends"`
	State            string         `json:"state"`
	Endpoint         *EndpointView  `json:"endpoint"`
	Refusal          *RefusalReport `json:"refusal"`
	// Problem says why an invalid route cannot be read.
	Problem string `json:"problem,omitempty"`
}

// EndpointView is the endpoint an edge published for the route's session.
type EndpointView struct {
	EdgeID         string    `json:"edgeId"`
	PublicHost     string    `json:"publicHost"`
	SignalingPort  uint32    `json:"signalingPort"`
	PublicUDPPorts []uint32  `json:"publicUdpPorts"`
	AssignedAt     time.Time `json:"assignedAt"`
}

// RefusalReport is the latest refusal of the route's session.
type RefusalReport struct {
	EdgeID string    `json:"edgeId"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// Build joins a snapshot. An edge whose heartbeat is older than stale is reported unhealthy.
func Build(s Snapshot, stale time.Duration) Report {
	r := Report{At: s.At.UTC(), Edges: []EdgeReport{}, Routes: []RouteReport{}}
	for id, e := range s.Edges {
		hb := e.GetHeartbeat().AsTime()
		age := s.At.Sub(hb)
		used := uint32(0)
		if e.GetCapacity() > e.GetFreePorts() {
			used = e.GetCapacity() - e.GetFreePorts()
		}
		r.Edges = append(r.Edges, EdgeReport{
			EdgeID: id, Pool: e.GetPool(), PublicHost: e.GetPublicHost(), Version: e.GetVersion(),
			Healthy: e.GetHeartbeat() != nil && age <= stale, Heartbeat: hb.UTC(), HeartbeatAgeSecs: age.Round(time.Second).Seconds(),
			Routes: e.GetRoutes(), Ports: PortUse{Capacity: e.GetCapacity(), Free: e.GetFreePorts(), InUse: used},
			Draining: e.GetDraining(), Claiming: e.GetClaiming(),
		})
		if e.GetDrainDeadline() != nil {
			at := e.GetDrainDeadline().AsTime().UTC()
			r.Edges[len(r.Edges)-1].DrainDeadline = &at
		}
	}
	slices.SortFunc(r.Edges, func(a, b EdgeReport) int { return strings.Compare(a.EdgeID, b.EdgeID) })
	for key, problem := range s.Invalid {
		r.Routes = append(r.Routes, RouteReport{InstanceID: key, State: StateInvalid, Problem: problem, MediaBackends: []string{}})
	}
	for key, rt := range s.Routes {
		rr := RouteReport{
			InstanceID: key, SessionID: rt.GetSessionId(), Pool: rt.GetPool(), WantedEdge: rt.GetEdgeId(),
			SignalingBackend: rt.GetSignalingBackend(), MediaBackends: append([]string{}, rt.GetMediaBackends()...), State: StateWaiting,
		}
		if ep, ok := s.Endpoints[key]; ok && ep.GetSessionId() == rt.GetSessionId() {
			rr.State = StateServed
			rr.Endpoint = &EndpointView{
				EdgeID: ep.GetEdgeId(), PublicHost: ep.GetPublicHost(), SignalingPort: ep.GetSignalingPort(),
				PublicUDPPorts: append([]uint32{}, ep.GetPublicUdpPorts()...), AssignedAt: ep.GetAssignedAt().AsTime().UTC(),
			}
		} else if ev, ok := s.Refusals[key]; ok && ev.GetSessionId() == rt.GetSessionId() {
			rr.State = StateRefused
			rr.Refusal = &RefusalReport{EdgeID: ev.GetRouteRefused().GetEdgeId(), Reason: ev.GetRouteRefused().GetReason(), At: ev.GetTime().AsTime().UTC()}
		}
		r.Routes = append(r.Routes, rr)
	}
	slices.SortFunc(r.Routes, func(a, b RouteReport) int { return strings.Compare(a.InstanceID, b.InstanceID) })
	return r
}

// WriteText writes r as two tables.
func WriteText(w io.Writer, r Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "EDGES (%d)\n", len(r.Edges))
	if len(r.Edges) == 0 {
		fmt.Fprintln(tw, "  none: no edge is sending heartbeats to this NATS")
	} else {
		fmt.Fprintln(tw, "  EDGE\tPOOL\tPUBLIC HOST\tHEALTH\tHEARTBEAT\tROUTES\tPORTS IN USE\tVERSION")
	}
	for _, e := range r.Edges {
		health := "ok"
		switch {
		case !e.Healthy:
			health = "stale"
		case e.Draining && e.DrainDeadline != nil:
			health = "draining until " + e.DrainDeadline.Format(time.RFC3339)
		case e.Draining:
			health = "draining"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s ago\t%d\t%d/%d\t%s\n", e.EdgeID, e.Pool, e.PublicHost, health,
			time.Duration(e.HeartbeatAgeSecs)*time.Second, e.Routes, e.Ports.InUse, e.Ports.Capacity, e.Version)
	}
	fmt.Fprintf(tw, "\nROUTES (%d)\n", len(r.Routes))
	if len(r.Routes) > 0 {
		fmt.Fprintln(tw, "  INSTANCE\tSESSION\tSTATE\tEDGE\tENDPOINT\tBACKENDS / REASON")
	}
	for _, rt := range r.Routes {
		edge, endpoint, detail := dash(rt.WantedEdge), "-", rt.SignalingBackend
		if len(rt.MediaBackends) > 0 {
			detail += " media " + strings.Join(rt.MediaBackends, ",")
		}
		switch rt.State {
		case StateServed:
			edge = rt.Endpoint.EdgeID
			endpoint = rt.Endpoint.PublicHost + ":" + strconv.FormatUint(uint64(rt.Endpoint.SignalingPort), 10)
			if len(rt.Endpoint.PublicUDPPorts) > 0 {
				endpoint += " udp " + joinPorts(rt.Endpoint.PublicUDPPorts)
			}
		case StateRefused:
			edge = rt.Refusal.EdgeID
			detail = rt.Refusal.Reason
		case StateInvalid:
			detail = rt.Problem
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", rt.InstanceID, dash(rt.SessionID), rt.State, edge, endpoint, detail)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func joinPorts(ports []uint32) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.FormatUint(uint64(p), 10)
	}
	return strings.Join(s, ",")
}
