// Package publisher is the agent's NATS write-back, kept apart from the REST API so the API answers
// whatever NATS does: an ordered in-memory outbox of events retried until JetStream acknowledges
// them, a lease keeper that holds the instance's route key in livegate_routes, and a watcher that
// hands the edge's assigned endpoint for this instance to the lifecycle.
package publisher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/livegate/livegate/agent/internal/metrics"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/natsconn"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Config says what the route carries and where events go.
type Config struct {
	InstanceID       string
	Pool             string
	EdgeID           string
	SignalingBackend string
	MediaBackends    []string
	LeaseTTL         time.Duration
	// Source is the events' ce-source, e.g. "livegate-agent/<instance>".
	Source string
	// Replicas is the copy count of the buckets and the stream when this publisher creates them.
	Replicas int
}

// Timings bound each NATS call and the pause after a failure.
const (
	callTimeout = 5 * time.Second
	minBackoff  = 250 * time.Millisecond
	maxBackoff  = 5 * time.Second
	routeRetry  = time.Second
)

// Publisher writes to NATS. Publish and SetRoute never block.
type Publisher struct {
	nc         *nats.Conn
	js         jetstream.JetStream
	cfg        Config
	log        zerolog.Logger
	metrics    *metrics.Metrics
	events     *events.Publisher
	onEndpoint func(*livegatev1.Endpoint)
	onRefused  func(*livegatev1.Event)

	mu        sync.Mutex
	queue     []*livegatev1.Event
	wake      chan struct{}
	route     string
	written   string
	dirty     bool
	routeWake chan struct{}
	lastWrite time.Time
	lastErr   string
	buckets   *kvstore.Buckets
}

// New prepares a publisher on nc; onEndpoint gets each endpoint assigned to this instance (nil when
// it is removed). Nothing is sent before Run.
// onRefused gets each route_refused event an edge publishes about this instance.
func New(nc *nats.Conn, cfg Config, log zerolog.Logger, m *metrics.Metrics, onEndpoint func(*livegatev1.Endpoint), onRefused func(*livegatev1.Event)) (*Publisher, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return &Publisher{
		nc: nc, js: js, cfg: cfg, log: log, metrics: m, onEndpoint: onEndpoint, onRefused: onRefused,
		events: events.NewPublisher(js, cfg.Source).WithLog(log),
		wake:   make(chan struct{}, 1), routeWake: make(chan struct{}, 1),
		// A key left by an earlier run of this instance goes at once, not when its lease runs out.
		dirty: true,
	}, nil
}

// Publish queues ev; its id and time are fixed now, so a retry is deduplicated by the stream.
func (p *Publisher) Publish(ev *livegatev1.Event) {
	p.events.Prepare(ev)
	p.mu.Lock()
	p.queue = append(p.queue, ev)
	n := len(p.queue)
	p.mu.Unlock()
	p.metrics.EventsPending.Set(float64(n))
	poke(p.wake)
}

// SetRoute asks for the route to carry sessionID, or to be deleted when it is "".
func (p *Publisher) SetRoute(sessionID string) {
	p.mu.Lock()
	p.route = sessionID
	p.mu.Unlock()
	poke(p.routeWake)
}

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Run works until ctx is done.
func (p *Publisher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, f := range []func(context.Context){p.runOutbox, p.runRoute, p.runEndpoints, p.runRefusals, p.runConnGauge} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(ctx)
		}()
	}
	wg.Wait()
}

// ensure creates the stream and buckets once; until it succeeds every loop waits and retries.
func (p *Publisher) ensure(ctx context.Context) (*kvstore.Buckets, error) {
	p.mu.Lock()
	b := p.buckets
	p.mu.Unlock()
	if b != nil {
		return b, nil
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	replicas := kvstore.WithReplicas(p.cfg.Replicas)
	if err := events.EnsureStream(cctx, p.js, replicas); err != nil {
		return nil, err
	}
	b, err := kvstore.Ensure(cctx, p.js, replicas)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.buckets = b
	p.mu.Unlock()
	return b, nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (p *Publisher) runOutbox(ctx context.Context) {
	backoff := minBackoff
	for {
		p.mu.Lock()
		var ev *livegatev1.Event
		if len(p.queue) > 0 {
			ev = p.queue[0]
		}
		p.mu.Unlock()
		if ev == nil {
			select {
			case <-ctx.Done():
				return
			case <-p.wake:
				continue
			}
		}
		err := p.publish(ctx, ev)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			p.metrics.PublishErrors.Inc()
			// One warning per outage; the retries that follow are debug noise.
			l := p.log.Debug()
			if backoff == minBackoff {
				l = p.log.Warn()
			}
			l.Err(err).Str("event", events.TypeToken(ev.Type)).Str("event_id", ev.Id).Dur("retry_in", backoff).Msg("event not published yet")
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		if backoff != minBackoff {
			p.log.Info().Str("event", events.TypeToken(ev.Type)).Str("event_id", ev.Id).Msg("events flowing again")
		}
		backoff = minBackoff
		p.mu.Lock()
		p.queue = p.queue[1:]
		n := len(p.queue)
		p.mu.Unlock()
		p.metrics.EventsPending.Set(float64(n))
		p.metrics.EventsPublished.Inc()
		p.log.Debug().Str("event", events.TypeToken(ev.Type)).Str("event_id", ev.Id).Msg("event published")
	}
}

func (p *Publisher) publish(ctx context.Context, ev *livegatev1.Event) error {
	if _, err := p.ensure(ctx); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return p.events.Publish(cctx, ev)
}

// runRoute keeps the route key level with what is wanted: written and renewed every third of the
// lease while a session id is wanted, deleted otherwise; failures retry every second.
func (p *Publisher) runRoute(ctx context.Context) {
	var next time.Time
	for {
		p.mu.Lock()
		want, written, dirty := p.route, p.written, p.dirty
		p.mu.Unlock()
		now := time.Now()
		var err error
		switch {
		case want != "" && (want != written || !now.Before(next)):
			err = p.putRoute(ctx, want)
			next = now.Add(p.cfg.LeaseTTL / 3)
		case want == "" && (written != "" || dirty):
			err = p.deleteRoute(ctx)
			next = time.Time{}
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			p.metrics.RouteErrors.Inc()
			if want != "" && want == written {
				p.metrics.LeaseRenewals.WithLabelValues("error").Inc()
			}
			p.mu.Lock()
			first := p.lastErr == ""
			p.lastErr = err.Error()
			p.mu.Unlock()
			l := p.log.Debug()
			if first {
				l = p.log.Warn()
			}
			l.Err(err).Str("session_id", want).Msg("route not written yet")
			next = now.Add(routeRetry)
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), 0)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-p.routeWake:
		case <-t.C:
		}
		t.Stop()
	}
}

func (p *Publisher) routeValue(sessionID string) ([]byte, error) {
	return wire.Marshal(&livegatev1.Route{
		SessionId:        sessionID,
		InstanceId:       p.cfg.InstanceID,
		SignalingBackend: p.cfg.SignalingBackend,
		MediaBackends:    p.cfg.MediaBackends,
		EdgeId:           p.cfg.EdgeID,
		Pool:             p.cfg.Pool,
		LeaseTtl:         durationpb.New(p.cfg.LeaseTTL),
		RenewedAt:        timestamppb.Now(),
	})
}

func (p *Publisher) putRoute(ctx context.Context, sessionID string) error {
	if _, err := p.ensure(ctx); err != nil {
		return err
	}
	val, err := p.routeValue(sessionID)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if _, err := kvstore.PutTTL(cctx, p.js, kvstore.RoutesBucket, p.cfg.InstanceID, val, p.cfg.LeaseTTL); err != nil {
		return err
	}
	p.mu.Lock()
	first := p.written != sessionID
	p.written, p.dirty, p.lastWrite, p.lastErr = sessionID, true, time.Now(), ""
	p.mu.Unlock()
	p.metrics.RouteWrites.Inc()
	if !first {
		p.metrics.LeaseRenewals.WithLabelValues("ok").Inc()
	}
	if first {
		p.log.Info().Str("session_id", sessionID).Dur("lease_ttl", p.cfg.LeaseTTL).Msg("route written")
	}
	return nil
}

func (p *Publisher) deleteRoute(ctx context.Context) error {
	b, err := p.ensure(ctx)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if err := b.Routes.Delete(cctx, p.cfg.InstanceID); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete %s/%s: %w", kvstore.RoutesBucket, p.cfg.InstanceID, err)
	}
	p.mu.Lock()
	was := p.written
	p.written, p.dirty, p.lastErr = "", false, ""
	p.mu.Unlock()
	if was != "" {
		p.log.Info().Str("session_id", was).Msg("route deleted")
	}
	return nil
}

func (p *Publisher) runEndpoints(ctx context.Context) {
	var b *kvstore.Buckets
	for b == nil {
		var err error
		if b, err = p.ensure(ctx); err != nil {
			if !sleep(ctx, routeRetry) {
				return
			}
		}
	}
	key := p.cfg.InstanceID
	deliver := func(e kvstore.Entry, ok bool) {
		if !ok || e.Deleted {
			p.onEndpoint(nil)
			return
		}
		ep := &livegatev1.Endpoint{}
		if err := wire.Unmarshal(e.Value, ep); err != nil {
			p.log.Warn().Err(err).Str("key", key).Msg("endpoint ignored")
			return
		}
		p.onEndpoint(ep)
	}
	_ = kvstore.Watch(ctx, b.Endpoints, key, kvstore.Handler{
		Snapshot: func(m map[string]kvstore.Entry) { e, ok := m[key]; deliver(e, ok) },
		Update:   func(e kvstore.Entry) { deliver(e, true) },
		// An endpoint the edge rewrote while NATS was away reaches the app at once, not when
		// the watch's heartbeats lapse.
		Restart: natsconn.Reconnects(p.nc),
		Error:   func(err error) { p.log.Warn().Err(err).Msg("endpoint watch restarts") },
	})
}

// RefusalSubject is where edges publish the refusals of instance's route, in any pool: a route
// whose pool is unusable is reported under the edge's own pool.
func RefusalSubject(instance string) string {
	return events.SubjectPrefix + ".*." + instance + "." + events.TypeToken(livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED)
}

// RefusalConsumer names the consumer on the events stream through which instance reads its
// refusals: one name per instance, so the NATS account can grant it that consumer alone.
func RefusalConsumer(instance string) string { return "route-refusals-" + instance }

// runRefusals follows the edges' route_refused events about this instance, so the agent can say
// why its route is not served. An edge reports a refusal once per change of the route, not with
// each lease renewal, so they are read from the stream: one published while NATS was away, or
// before this process started, still arrives (an old session's is ignored by the session id).
func (p *Publisher) runRefusals(ctx context.Context) {
	f := events.NewFollower(p.js, RefusalConsumer(p.cfg.InstanceID), RefusalSubject(p.cfg.InstanceID), events.FollowHandler{
		Event: func(subject string, ev *livegatev1.Event) {
			if ev.GetRouteRefused() == nil || ev.InstanceId != p.cfg.InstanceID {
				p.log.Debug().Str("subject", subject).Msg("route_refused event ignored")
				return
			}
			p.onRefused(ev)
		},
		Bad: func(subject string, err error) {
			p.log.Debug().Err(err).Str("subject", subject).Msg("route_refused event ignored")
		},
		Error: func(err error) { p.log.Debug().Err(err).Msg("route refusals: consumer trouble") },
	})
	warned := false
	for {
		_, err := p.ensure(ctx)
		if err == nil {
			err = f.Follow(ctx)
		}
		if err == nil || ctx.Err() != nil {
			return
		}
		l := p.log.Debug()
		if !warned {
			l, warned = p.log.Warn(), true
		}
		l.Err(err).Msg("route refusals not followed yet")
		if !sleep(ctx, routeRetry) {
			return
		}
	}
}

func (p *Publisher) runConnGauge(ctx context.Context) {
	for {
		v := 0.0
		if p.nc.IsConnected() {
			v = 1
		}
		p.metrics.NATSConnected.Set(v)
		if !sleep(ctx, time.Second) {
			return
		}
	}
}

// Flush waits until every queued event is acknowledged and the route key matches what is wanted,
// or ctx is done.
func (p *Publisher) Flush(ctx context.Context) error {
	for {
		p.mu.Lock()
		settled := len(p.queue) == 0 && p.route == p.written && (p.route != "" || !p.dirty)
		n := len(p.queue)
		p.mu.Unlock()
		if settled {
			return nil
		}
		if !sleep(ctx, 50*time.Millisecond) {
			return fmt.Errorf("flush: %d events still pending: %w", n, ctx.Err())
		}
	}
}

// Status is the NATS part of GET /v1/streaming/session.
type Status struct {
	Connected        bool       `json:"connected"`
	PendingEvents    int        `json:"pendingEvents"`
	RouteSessionID   string     `json:"routeSessionId"`
	RouteWritten     bool       `json:"routeWritten"`
	LastRouteWrite   *time.Time `json:"lastRouteWrite"`
	LastRouteError   string     `json:"lastRouteError,omitempty"`
	LeaseTTL         string     `json:"leaseTtl"`
	SignalingBackend string     `json:"signalingBackend"`
	MediaBackends    []string   `json:"mediaBackends"`
	EdgeID           string     `json:"edgeId,omitempty"`
}

// Status reports the connection, the outbox and the route.
func (p *Publisher) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Status{
		Connected: p.nc.IsConnected(), PendingEvents: len(p.queue),
		RouteSessionID: p.route, RouteWritten: p.route != "" && p.route == p.written,
		LastRouteError: p.lastErr, LeaseTTL: p.cfg.LeaseTTL.String(),
		SignalingBackend: p.cfg.SignalingBackend, MediaBackends: p.cfg.MediaBackends, EdgeID: p.cfg.EdgeID,
	}
	if !p.lastWrite.IsZero() {
		t := p.lastWrite.UTC()
		s.LastRouteWrite = &t
	}
	return s
}
