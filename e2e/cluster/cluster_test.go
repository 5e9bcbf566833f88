// Package cluster runs livegate on a three-node NATS cluster (JetStream, every bucket and the event
// stream R3) in network namespaces, and breaks the cluster while sessions come and go.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestClusterNodeLossAndPartition: two edges of one pool, seeded with different servers, and three
// agents that know all three, on an R3 cluster. Pool routes come and go (one a quarter second,
// each living about 3 s) while the server leading the routes bucket is SIGKILLed and later started
// again, and then the server most of the edges and agents are connected to is cut off the network
// (peers and clients alike) and later healed. Every client moves to another server in time: no
// live session (the agents', leased, and the churned ones) is missing from every edge's HAProxy
// map for as long as a lease, no agent's lease runs out, and each agent's session keeps its edge
// and public port (no heartbeat lapsed, nothing was taken over). Afterwards every session is
// served by exactly the edge its endpoint names, no acknowledged event is lost or stored twice and
// every event owed is there (see checkEvents), and once everything ended nothing is left on any
// edge.
func TestClusterNodeLossAndPartition(t *testing.T) {
	e := newEnv(t, 3)
	on := e.clients()
	if a, b := on["livegate-edgeproxy/edge1"], on["livegate-edgeproxy/edge2"]; a == nil || b == nil || a == b {
		where, _ := e.placement()
		t.Fatalf("want the edges on two different servers: %s", where)
	}
	for _, stream := range streams {
		if _, err := e.leader(stream); err != nil {
			t.Fatal(err)
		}
	}
	w := newWatch(e)
	for _, n := range e.nodes {
		w.agentSession(n.instance)
	}
	where, _ := e.placement()
	t.Logf("clients: %s", where)
	stopChurn := w.churn()
	stopMonitor := w.monitor()

	hold := func(what string, d time.Duration) {
		t.Logf("%s: holding %s", what, d)
		time.Sleep(d)
	}
	hold("steady churn", 3*time.Second)

	// The node that leads the routes bucket dies, and comes back on its store.
	dead, err := e.leader("KV_" + kvstore.RoutesBucket)
	if err != nil {
		t.Fatal(err)
	}
	dead.Stop(true)
	t.Logf("killed %s (SIGKILL), the routes bucket's leader", dead.Name)
	hold(dead.Name+" down", leaseTTL+2*time.Second)
	e.restart(dead)
	t.Logf("%s started again", dead.Name)
	// One fault at a time, as an operator restarts one node at a time: every stream is led and
	// its copies current again before the next.
	e.eventually(30*time.Second, "every stream led again with all three copies current", e.allCurrent)
	hold("healed churn", 2*time.Second)

	// The server most of the edges and agents are connected to drops off the network: its peers
	// and its clients both lose it.
	where, cut := e.placement()
	e.partition(cut, true)
	t.Logf("partitioned %s (clients: %s)", cut.Name, where)
	hold(cut.Name+" partitioned", leaseTTL+2*time.Second)
	e.partition(cut, false)
	t.Logf("healed the partition of %s", cut.Name)
	hold("healed churn", 3*time.Second)
	stopChurn()
	e.eventually(30*time.Second, "every stream's copies current again", e.allCurrent)
	rep := stopMonitor()
	where, _ = e.placement()
	t.Logf("clients after the faults: %s", where)

	t.Logf("figure: %d sessions watched (%d churned routes written, %d writes failed during the faults), longest unrouted %s (%s), lease %s",
		rep.sessions, rep.written, rep.failedWrites, rep.worst.Round(time.Millisecond), rep.worstID, leaseTTL)
	if rep.worst >= leaseTTL {
		t.Errorf("session %s unrouted for %s, longer than a lease (%s)", rep.worstID, rep.worst.Round(time.Millisecond), leaseTTL)
	}
	if rep.written < 20 {
		t.Errorf("only %d churned routes written: the churn did not run", rep.written)
	}
	if len(w.lapsed) > 0 {
		t.Errorf("agents' route keys deleted during the faults (leases ran out): %v", w.lapsed)
	}
	for _, n := range e.nodes {
		ep, err := e.endpoint(n.instance)
		if err != nil {
			t.Fatal(err)
		}
		if got, was := endpointOf(ep), w.agents[n.instance]; got != was {
			t.Errorf("%s's endpoint is %s after the faults, was %s: its session moved", n.instance, got, was)
		}
	}
	w.exactlyOnce()
	w.checkEvents()

	// Everything ends: the churned routes are deleted, the agents stop (deleting theirs).
	w.deleteAll()
	for _, n := range e.nodes {
		if err := n.agent.Stop(10 * time.Second); err != nil {
			t.Errorf("stop agent of %s: %v", n.instance, err)
		}
	}
	e.clean()
}

// endpoint reads key's endpoint.
func (e *env) endpoint(key string) (*livegatev1.Endpoint, error) {
	ctx, cancel := context.WithTimeout(e.ctx, kvTimeout)
	defer cancel()
	entry, err := e.kv.Endpoints.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("endpoint of %s: %w", key, err)
	}
	ep := &livegatev1.Endpoint{}
	if err := wire.Unmarshal(entry.Value(), ep); err != nil {
		return nil, fmt.Errorf("endpoint of %s: %w", key, err)
	}
	return ep, nil
}

// streams are the JetStream streams livegate keeps.
var streams = []string{"KV_" + kvstore.RoutesBucket, "KV_" + kvstore.EndpointsBucket, "KV_" + kvstore.EdgesBucket, events.StreamName}

// allCurrent reports a stream without a leader or with a copy that is not current.
func (e *env) allCurrent() error {
	for _, s := range streams {
		if err := e.current(s); err != nil {
			return err
		}
	}
	return nil
}

// current reports a replica of stream that is not current.
func (e *env) current(stream string) error {
	ctx, cancel := context.WithTimeout(e.ctx, kvTimeout)
	defer cancel()
	st, err := e.js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	if info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != 2 {
		return fmt.Errorf("stream %s: cluster %+v", stream, info.Cluster)
	}
	for _, r := range info.Cluster.Replicas {
		if !r.Current || r.Offline {
			return fmt.Errorf("stream %s: replica %s current %t offline %t", stream, r.Name, r.Current, r.Offline)
		}
	}
	return nil
}

// watch follows the sessions the test expects routed.
type watch struct {
	e  *env
	mu sync.Mutex
	// live maps a route key to its session; since and seen say since when it should be routed
	// and when an edge's map last had it.
	live  map[string]*tracked
	ended map[string]string // key → session of the churned routes deleted
	// written counts churned routes acknowledged; failedWrites those the cluster refused.
	written, failedWrites int
	worst                 time.Duration
	worstID               string
	sessions              map[string]bool
	keyOf                 map[string]string // session → its route key
	// programmed holds the sessions seen in an edge's map.
	programmed map[string]bool
	// agents holds each agent's endpoint (session, edge, ports) as first programmed.
	agents map[string]string
	// lapsed lists the agents' route keys that were deleted (a lease that ran out) while watched.
	lapsed []string
}

func endpointOf(ep *livegatev1.Endpoint) string {
	return fmt.Sprintf("session %s on %s udp %v", ep.GetSessionId(), ep.GetEdgeId(), ep.GetPublicUdpPorts())
}

type tracked struct {
	session     string
	since, seen time.Time
}

func newWatch(e *env) *watch {
	return &watch{e: e, live: map[string]*tracked{}, ended: map[string]string{}, sessions: map[string]bool{}, keyOf: map[string]string{}, agents: map[string]string{}, programmed: map[string]bool{}}
}

// agentSession waits until instance's agent has its route written and programmed, and watches it.
func (w *watch) agentSession(instance string) {
	e := w.e
	var sess, held string
	e.eventually(20*time.Second, instance+"'s route programmed", func() error {
		ctx, cancel := context.WithTimeout(e.ctx, kvTimeout)
		defer cancel()
		entry, err := e.kv.Routes.Get(ctx, instance)
		if err != nil {
			return err
		}
		r := &livegatev1.Route{}
		if err := wire.Unmarshal(entry.Value(), r); err != nil {
			return err
		}
		if w.owners(r.GetSessionId()) == nil {
			return fmt.Errorf("%s's session %s in no edge's map", instance, r.GetSessionId())
		}
		ep, err := e.endpoint(instance)
		if err != nil || ep.GetSessionId() != r.GetSessionId() {
			return fmt.Errorf("%s's endpoint %v for session %s: %v", instance, ep, r.GetSessionId(), err)
		}
		sess, held = r.GetSessionId(), endpointOf(ep)
		return nil
	})
	now := time.Now()
	w.mu.Lock()
	w.agents[instance] = held
	w.live[instance] = &tracked{session: sess, since: now, seen: now}
	w.sessions[sess] = true
	w.keyOf[sess] = instance
	w.programmed[sess] = true
	w.mu.Unlock()
}

// owners lists the edges whose HAProxy map routes session; nil when none does.
func (w *watch) owners(session string) []*edge {
	var in []*edge
	for _, g := range w.e.edges {
		ctx, cancel := context.WithTimeout(w.e.ctx, 2*time.Second)
		m, err := g.showMap(ctx)
		cancel()
		if err == nil && m[session] != "" {
			in = append(in, g)
		}
	}
	return in
}

// churn writes a pool route every 250 ms and deletes each about 3 s later, through the test's
// own client of the cluster, until the returned function is called.
func (w *watch) churn() func() {
	e := w.e
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		var order []string
		for seq := 1; ; seq++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			key := "c" + strconv.Itoa(seq)
			sess := "churn-" + strconv.Itoa(seq)
			err := putRoute(ctx, e.kv.Routes, key, sess, stack.LabNodeLAN(1+seq%len(e.nodes)))
			w.mu.Lock()
			if err == nil {
				now := time.Now()
				w.live[key] = &tracked{session: sess, since: now}
				w.sessions[sess] = true
				w.keyOf[sess] = key
				w.written++
				order = append(order, key)
			} else {
				w.failedWrites++
				// It may have been stored all the same: it is deleted at the end with the rest.
				order = append(order, key)
			}
			w.mu.Unlock()
			for len(order) > 12 {
				old := order[0]
				w.mu.Lock()
				tr := w.live[old]
				delete(w.live, old)
				w.mu.Unlock()
				if deleteRoute(ctx, e.kv.Routes, old) != nil {
					// Perhaps deleted all the same: no event is expected of it.
					break
				}
				if tr != nil {
					w.mu.Lock()
					w.ended[old] = tr.session
					w.mu.Unlock()
				}
				order = order[1:]
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// report is what the monitor saw.
type report struct {
	sessions, written, failedWrites int
	worst                           time.Duration
	worstID                         string
}

// monitor samples the edges' HAProxy maps every 200 ms (through their runtime sockets: no NATS
// involved) and keeps, for each live session, how long it has gone without being in any map. It
// also watches the routes bucket for an agent's key going away: a lease that ran out.
func (w *watch) monitor() func() report {
	e := w.e
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		_ = kvstore.Watch(ctx, e.kv.Routes, ">", kvstore.Handler{Update: func(en kvstore.Entry) {
			if en.Deleted && en.Key[0] != 'c' {
				w.mu.Lock()
				w.lapsed = append(w.lapsed, en.Key)
				w.mu.Unlock()
			}
		}})
	}()
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			routed := map[string]bool{}
			for _, g := range e.edges {
				mctx, mcancel := context.WithTimeout(ctx, 2*time.Second)
				m, err := g.showMap(mctx)
				mcancel()
				if err != nil {
					continue
				}
				for s := range m {
					routed[s] = true
				}
			}
			now := time.Now()
			w.mu.Lock()
			for _, tr := range w.live {
				if routed[tr.session] {
					tr.seen = now
					w.programmed[tr.session] = true
					continue
				}
				from := tr.since
				if tr.seen.After(from) {
					from = tr.seen
				}
				if d := now.Sub(from); d > w.worst {
					w.worst, w.worstID = d, tr.session
				}
			}
			w.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return func() report {
		cancel()
		<-done
		<-watched
		w.mu.Lock()
		defer w.mu.Unlock()
		return report{sessions: len(w.sessions), written: w.written, failedWrites: w.failedWrites, worst: w.worst, worstID: w.worstID}
	}
}

// exactlyOnce checks that each live session is in the map of the edge its endpoint names and in
// no other, once things settled.
func (w *watch) exactlyOnce() {
	e := w.e
	w.mu.Lock()
	live := map[string]string{}
	for k, tr := range w.live {
		live[k] = tr.session
	}
	w.mu.Unlock()
	served := map[string]int{}
	took := e.eventually(20*time.Second, "every session claimed exactly once", func() error {
		clear(served)
		for key, sess := range live {
			ep, err := e.endpoint(key)
			if err != nil {
				return err
			}
			if ep.GetSessionId() != sess {
				return fmt.Errorf("endpoint of %s names session %s, want %s", key, ep.GetSessionId(), sess)
			}
			in := w.owners(sess)
			if len(in) != 1 || in[0].ID != ep.GetEdgeId() {
				var ids []string
				for _, g := range in {
					ids = append(ids, g.ID)
				}
				return fmt.Errorf("session %s of %s in the maps of %v, its endpoint names %s", sess, key, ids, ep.GetEdgeId())
			}
			served[ep.GetEdgeId()]++
		}
		return nil
	})
	e.t.Logf("figure: %d live sessions each served by exactly the edge its endpoint names (%v), %s after the faults",
		len(live), served, took.Round(time.Millisecond))
}

// checkEvents holds the publishers to what they were told and the stream to what it acknowledged:
// every route_programmed and route_removed an edge reported is acknowledged (none dropped in the
// edge's queue or given up on), every event acknowledged to an edge or an agent is stored exactly
// once, at the sequence its acknowledgement named (a leader change lost no acknowledged write and
// Nats-Msg-Id deduplication held across retries), and a fresh consumer reading the stream from the
// start delivers each. On top of that, every agent's session has its route_programmed and every
// ended route with a route_programmed its route_removed (an edge that lost its watch keeps a
// route for its lease, so that can take a lease after the faults). A churned route seen in an
// edge's map but never reported programmed is owed no event only when an edge's claim write for
// it failed (the edge maps a pool route while its claim is written and unmaps it when the write
// does not land, and the route ended before a claim did): those are counted.
func (w *watch) checkEvents() {
	e := w.e
	w.mu.Lock()
	ended := map[string]bool{}
	for _, s := range w.ended {
		if w.programmed[s] {
			ended[s] = true
		}
	}
	programmed := map[string]bool{}
	for s := range w.programmed {
		programmed[s] = true
	}
	unseen := len(w.sessions) - len(w.programmed)
	agents := map[string]bool{}
	for _, n := range e.nodes {
		agents[w.live[n.instance].session] = true
	}
	keyOf := maps.Clone(w.keyOf)
	w.mu.Unlock()

	var f eventFigures
	e.eventually(45*time.Second, "every event reported acknowledged, every acknowledged one stored once and read, every owed one there", func() error {
		acks := e.acked()
		if err := e.reportedAcked(acks); err != nil {
			return err
		}
		ids, bySeq, err := e.stored()
		if err != nil {
			return err
		}
		read, err := e.readEvents()
		if err != nil {
			return err
		}
		f = eventFigures{acked: len(acks), stored: len(bySeq)}
		delivered := map[string]bool{}
		for _, ev := range read {
			delivered[ev.GetId()] = true
		}
		var bad []string
		for id, as := range acks {
			a := as[0]
			what := fmt.Sprintf("%s %s of %s (acked to %s at seq %d)", id, a.event, a.session, a.by, a.seq)
			for _, b := range as[1:] {
				if b.duplicate {
					f.retries++
				}
			}
			switch seqs := ids[id]; {
			case len(seqs) == 0:
				bad = append(bad, fmt.Sprintf("%s not in the stream: seq %d holds %q", what, a.seq, bySeq[a.seq]))
			case len(seqs) > 1 || (!a.duplicate && seqs[0] != a.seq):
				bad = append(bad, fmt.Sprintf("%s stored at %v", what, seqs))
			}
			if !delivered[id] {
				bad = append(bad, what+" not delivered to a fresh consumer")
			}
		}
		for id, seqs := range ids {
			if len(seqs) > 1 {
				bad = append(bad, fmt.Sprintf("%s stored twice, at %v", id, seqs))
			}
		}
		added, removed := map[string]bool{}, map[string]bool{}
		for _, ev := range read {
			switch ev.GetType() {
			case livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED:
				added[ev.GetSessionId()] = true
			case livegatev1.EventType_EVENT_TYPE_ROUTE_REMOVED:
				removed[ev.GetSessionId()] = true
			}
		}
		failed := e.failedClaims()
		f.silent = f.silent[:0]
		for s := range programmed {
			if added[s] {
				continue
			}
			if agents[s] || !failed[keyOf[s]] {
				bad = append(bad, s+" has no route_programmed")
			}
			f.silent = append(f.silent, s)
		}
		for s := range ended {
			if added[s] && !removed[s] {
				bad = append(bad, s+" has no route_removed")
			}
		}
		if len(bad) > 0 {
			sort.Strings(bad)
			return fmt.Errorf("%d wrong: %v", len(bad), bad)
		}
		return nil
	})
	sort.Strings(f.silent)
	e.t.Logf("figure: %d events acknowledged to the edges and agents (%d retries answered as duplicates), every one an edge reported among them, each stored once at its acknowledged sequence and delivered to a fresh consumer; the stream holds %d",
		f.acked, f.retries, f.stored)
	e.t.Logf("figure: of %d sessions seen in a map, %d were never reported programmed, each ended while an edge's claim of it had failed: %v; every ended one with a route_programmed has its route_removed; %d churned routes came and went unseen",
		len(programmed), len(f.silent), f.silent, unseen)
}

// eventFigures are checkEvents' counts.
type eventFigures struct {
	acked, retries, stored int
	silent                 []string
}

// ack is what the stream told a publisher about one event.
type ack struct {
	by, event, instance, session string
	seq                          uint64
	duplicate                    bool
}

// logFields picks the fields of a publisher's "event acknowledged" debug line and of an edge's
// "route programmed" and "route removed" lines (zerolog console).
var logFields = regexp.MustCompile(`(?:^| )(event|event_id|instance_id|subject|session_id|stream_seq|duplicate)=(\S+)`)

func fields(line string) map[string]string {
	f := map[string]string{}
	for _, m := range logFields.FindAllStringSubmatch(line, -1) {
		f[m[1]] = m[2]
	}
	return f
}

// failedClaims is the route keys for which an edge logged a claim write that failed.
func (e *env) failedClaims() map[string]bool {
	out := map[string]bool{}
	for _, g := range e.edges {
		for _, line := range strings.Split(g.P.Output(), "\n") {
			if strings.Contains(line, " claim write failed ") {
				out[fields(line)["instance_id"]] = true
			}
		}
	}
	return out
}

// logs is each edge's and agent's output so far, by edge id or instance.
func (e *env) logs() map[string]string {
	out := map[string]string{}
	for _, g := range e.edges {
		out[g.ID] = g.P.Output()
	}
	for _, n := range e.nodes {
		out[n.instance] = n.agent.Output()
	}
	return out
}

// acked collects, from every edge's and agent's log, each event the stream acknowledged, by id.
func (e *env) acked() map[string][]ack {
	out := map[string][]ack{}
	for by, log := range e.logs() {
		for _, line := range strings.Split(log, "\n") {
			if !strings.Contains(line, " event acknowledged ") {
				continue
			}
			f := fields(line)
			seq, err := strconv.ParseUint(f["stream_seq"], 10, 64)
			if err != nil || f["event_id"] == "" {
				e.t.Fatalf("%s: unreadable acknowledgement %q", by, line)
			}
			// The subject is livegate.v1.events.<pool>.<instance>.<type>.
			subject := strings.Split(f["subject"], ".")
			if len(subject) != 6 {
				e.t.Fatalf("%s: acknowledgement without an event subject %q", by, line)
			}
			out[f["event_id"]] = append(out[f["event_id"]], ack{by: by, event: f["event"], instance: subject[4], session: f["session_id"], seq: seq, duplicate: f["duplicate"] == "true"})
		}
	}
	return out
}

// reportedAcked reports each route programmed or removed that an edge logged more often than the
// stream acknowledged an event of it to that edge.
func (e *env) reportedAcked(acks map[string][]ack) error {
	got := map[string]int{}
	for _, as := range acks {
		a := as[0]
		got[a.by+" "+a.event+" "+a.instance+" "+a.session]++
	}
	want := map[string]int{}
	for _, g := range e.edges {
		for _, line := range strings.Split(g.P.Output(), "\n") {
			for _, kind := range []livegatev1.EventType{livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED, livegatev1.EventType_EVENT_TYPE_ROUTE_REMOVED} {
				if strings.Contains(line, " "+strings.ReplaceAll(events.TypeToken(kind), "_", " ")+" ") {
					f := fields(line)
					want[g.ID+" "+events.TypeToken(kind)+" "+f["instance_id"]+" "+f["session_id"]]++
				}
			}
		}
	}
	var short []string
	for k, n := range want {
		if got[k] < n {
			short = append(short, fmt.Sprintf("%s: reported %d, acknowledged %d", k, n, got[k]))
		}
	}
	if len(short) > 0 {
		sort.Strings(short)
		return fmt.Errorf("%d events an edge reported not acknowledged: %v", len(short), short)
	}
	return nil
}

// stored reads LIVEGATE_EVENTS sequence by sequence.
func (e *env) stored() (map[string][]uint64, map[uint64]string, error) {
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	st, err := e.js.Stream(ctx, events.StreamName)
	if err != nil {
		return nil, nil, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, nil, err
	}
	ids, bySeq := map[string][]uint64{}, map[uint64]string{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && seq > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("stream seq %d: %w", seq, err)
		}
		ev, err := events.Decode(m.Data)
		if err != nil {
			return nil, nil, fmt.Errorf("stream seq %d: %w", seq, err)
		}
		ids[ev.GetId()] = append(ids[ev.GetId()], seq)
		bySeq[seq] = ev.GetId()
	}
	return ids, bySeq, nil
}

// readEvents reads every message LIVEGATE_EVENTS holds, in order.
func (e *env) readEvents() ([]*livegatev1.Event, error) {
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	c, err := e.js.OrderedConsumer(ctx, events.StreamName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	var out []*livegatev1.Event
	for {
		info, err := c.Info(ctx)
		if err != nil {
			return nil, err
		}
		if info.NumPending == 0 {
			return out, nil
		}
		batch, err := c.Fetch(int(min(info.NumPending, 500)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, err
		}
		for m := range batch.Messages() {
			ev, err := events.Decode(m.Data())
			if err != nil {
				return nil, fmt.Errorf("event %s: %w", m.Subject(), err)
			}
			out = append(out, ev)
		}
		if err := batch.Error(); err != nil {
			return nil, err
		}
	}
}

// deleteAll deletes every churned route key left, those whose write seemed to fail included.
func (w *watch) deleteAll() {
	e := w.e
	e.eventually(20*time.Second, "churned routes deleted", func() error {
		ks, err := keys(e.ctx, e.kv.Routes)
		if err != nil {
			return err
		}
		for _, k := range ks {
			if k[0] != 'c' {
				continue
			}
			if err := deleteRoute(e.ctx, e.kv.Routes, k); err != nil {
				return err
			}
		}
		return nil
	})
}

// clean checks that nothing leaked once every session is gone: no route or endpoint key, and on
// either edge an empty HAProxy map and DNAT map.
func (e *env) clean() {
	e.t.Helper()
	took := e.eventually(30*time.Second, "no leak", func() error {
		for _, kv := range []jetstream.KeyValue{e.kv.Routes, e.kv.Endpoints} {
			ks, err := keys(e.ctx, kv)
			if err != nil || len(ks) > 0 {
				return fmt.Errorf("%s keys left: %v %v", kv.Bucket(), ks, err)
			}
		}
		for _, g := range e.edges {
			if m, err := g.showMap(e.ctx); err != nil || len(m) > 0 {
				return fmt.Errorf("%s HAProxy map entries left: %v %v", g.ID, m, err)
			}
			if n, err := g.dnatPorts(e.ctx); err != nil || n > 0 {
				return fmt.Errorf("%s: %d ports left in the DNAT map %v", g.ID, n, err)
			}
		}
		return nil
	})
	e.t.Logf("no leak: routes, endpoints, both edges' HAProxy maps and DNAT maps empty (%s after the last session ended)", took.Round(time.Millisecond))
}

// putRoute writes a pool route for key to backend's demo app, as an agent would, with the agents'
// lease (never renewed: each lives a few seconds; an edge that missed its deletion during a fault
// drops it when the lease ends).
func putRoute(ctx context.Context, kv jetstream.KeyValue, key, session string, backend netip.Addr) error {
	data, err := wire.Marshal(&livegatev1.Route{
		SessionId: session, InstanceId: key, Pool: pool,
		SignalingBackend: netip.AddrPortFrom(backend, stack.AppSignalingPort).String(),
		MediaBackends:    []string{netip.AddrPortFrom(backend, stack.AppMediaPort).String()},
		LeaseTtl:         durationpb.New(leaseTTL), RenewedAt: timestamppb.Now(),
	})
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, kvTimeout)
	defer cancel()
	if _, err := kv.Put(cctx, key, data); err != nil {
		return fmt.Errorf("put route %s: %w", key, err)
	}
	return nil
}

func deleteRoute(ctx context.Context, kv jetstream.KeyValue, key string) error {
	cctx, cancel := context.WithTimeout(ctx, kvTimeout)
	defer cancel()
	if err := kv.Delete(cctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete route %s: %w", key, err)
	}
	return nil
}
