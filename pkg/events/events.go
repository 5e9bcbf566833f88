// Package events publishes and decodes livegate lifecycle events: protojson bodies on
// livegate.v1.events.<pool>.<instance>.<type>, CloudEvents binary mode in the NATS headers, kept by
// the JetStream stream LIVEGATE_EVENTS, deduplicated by Nats-Msg-Id.
package events

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/logging"
	"github.com/livegate/livegate/pkg/sessionid"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	// StreamName is the JetStream stream that keeps events for replay and audit.
	StreamName = "LIVEGATE_EVENTS"
	// SubjectPrefix starts every event subject.
	SubjectPrefix = "livegate.v1.events"
	// TypePrefix starts every ce-type.
	TypePrefix = "dev.livegate.v1."
	// MaxAge and MaxBytes bound what the stream keeps.
	MaxAge   = 7 * 24 * time.Hour
	MaxBytes = 1 << 30
)

// CloudEvents binary-mode header names.
const (
	HeaderSpecVersion = "ce-specversion"
	HeaderID          = "ce-id"
	HeaderType        = "ce-type"
	HeaderSource      = "ce-source"
	HeaderTime        = "ce-time"
	HeaderContentType = "content-type"
)

// TypeToken is the subject token of t: EVENT_TYPE_SESSION_ENDED is "session_ended".
func TypeToken(t livegatev1.EventType) string {
	return strings.ToLower(strings.TrimPrefix(t.String(), "EVENT_TYPE_"))
}

// ParseTypeToken is the inverse of TypeToken.
func ParseTypeToken(token string) (livegatev1.EventType, error) {
	v, ok := livegatev1.EventType_value["EVENT_TYPE_"+strings.ToUpper(token)]
	if !ok || v == 0 {
		return 0, fmt.Errorf("unknown event type %q", token)
	}
	return livegatev1.EventType(v), nil
}

// Subject is where an event of type t from instance in pool is published.
func Subject(pool, instance string, t livegatev1.EventType) string {
	return SubjectPrefix + "." + pool + "." + instance + "." + TypeToken(t)
}

// ValidateToken checks that s can stand as one subject token and one KV key (a pool, instance or
// edge id): the session id charset without the dot, which would split a subject, and without the
// tilde, which KV keys refuse.
func ValidateToken(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if len(s) > sessionid.MaxLen {
		return fmt.Errorf("%s is %d bytes long: at most %d characters of A-Z a-z 0-9 _ - are allowed", what, len(s), sessionid.MaxLen)
	}
	if strings.ContainsAny(s, ".~") || sessionid.Validate(s) != nil {
		return fmt.Errorf("%s %q: only A-Z a-z 0-9 _ - are allowed, at most %d characters", what, logging.Clip(s), sessionid.MaxLen)
	}
	return nil
}

// EnsureStream creates LIVEGATE_EVENTS or updates it to the configuration livegate needs, with
// the replica count kvstore.Replicas settles on.
func EnsureStream(ctx context.Context, js jetstream.JetStream, opts ...kvstore.EnsureOption) error {
	n, err := kvstore.Replicas(ctx, js, StreamName, opts...)
	if err != nil {
		return fmt.Errorf("ensure stream %s: %w", StreamName, err)
	}
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "livegate lifecycle events",
		Subjects:    []string{SubjectPrefix + ".>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      MaxAge,
		MaxBytes:    MaxBytes,
		Discard:     jetstream.DiscardOld,
		Duplicates:  2 * time.Minute,
		Replicas:    n,
	})
	if err != nil {
		return fmt.Errorf("ensure stream %s with %d replicas: %w", StreamName, n, err)
	}
	return nil
}

// Publisher publishes events with CloudEvents headers.
type Publisher struct {
	js     jetstream.JetStream
	source string
	now    func() time.Time
	log    zerolog.Logger
}

// NewPublisher publishes as source, e.g. "livegate-agent/node-1".
func NewPublisher(js jetstream.JetStream, source string) *Publisher {
	return &Publisher{js: js, source: source, now: time.Now, log: zerolog.Nop()}
}

// WithLog logs every attempt at debug level: each acknowledgement with the stream sequence it
// got (or that it was a duplicate of a stored one), so what a publisher was told can be compared
// with what the stream holds. The subject names the instance: the agent's logger already carries
// an instance_id.
func (p *Publisher) WithLog(log zerolog.Logger) *Publisher {
	p.log = log
	return p
}

// Prepare fills the id, time and source of ev where empty, so a caller can keep the event and
// retry it with the same id: the stream then drops the duplicate.
func (p *Publisher) Prepare(ev *livegatev1.Event) {
	if ev.Id == "" {
		ev.Id = sessionid.New()
	}
	if ev.Time == nil {
		ev.Time = timestamppb.New(p.now())
	}
	if ev.Source == "" {
		ev.Source = p.source
	}
}

// Publish sends ev and waits for the stream's acknowledgement.
func (p *Publisher) Publish(ctx context.Context, ev *livegatev1.Event) error {
	msg, err := p.message(ev)
	if err != nil {
		return err
	}
	return p.send(ctx, ev, msg)
}

func (p *Publisher) message(ev *livegatev1.Event) (*nats.Msg, error) {
	p.Prepare(ev)
	return Message(ev)
}

func (p *Publisher) send(ctx context.Context, ev *livegatev1.Event, msg *nats.Msg) error {
	ack, err := p.js.PublishMsg(ctx, msg, jetstream.WithMsgID(ev.Id))
	if err != nil {
		p.log.Debug().Err(err).Str("event", TypeToken(ev.Type)).Str("event_id", ev.Id).
			Str("subject", msg.Subject).Str("session_id", ev.SessionId).Msg("event publish attempt failed")
		return fmt.Errorf("publish %s event %s: %w", TypeToken(ev.Type), ev.Id, err)
	}
	p.log.Debug().Str("event", TypeToken(ev.Type)).Str("event_id", ev.Id).Str("subject", msg.Subject).
		Str("session_id", ev.SessionId).Str("stream", ack.Stream).Uint64("stream_seq", ack.Sequence).
		Bool("duplicate", ack.Duplicate).Msg("event acknowledged")
	return nil
}

// DeliverWindow bounds Deliver: well inside the stream's duplicate window, so a retry of an event
// that did reach the stream is always dropped as a duplicate.
const DeliverWindow = 30 * time.Second

// Deliver publishes ev, retrying with the same id until the stream acknowledges it, ctx ends or
// DeliverWindow passes (an event that cannot be built is not retried): a leader election in a
// cluster or a reconnect to another server costs no event and duplicates none.
func (p *Publisher) Deliver(ctx context.Context, ev *livegatev1.Event) error {
	msg, err := p.message(ev)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, DeliverWindow)
	defer cancel()
	wait := 250 * time.Millisecond
	for {
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		err := p.send(actx, ev, msg)
		acancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// Message builds the NATS message for a prepared event.
func Message(ev *livegatev1.Event) (*nats.Msg, error) {
	if ev.Type == livegatev1.EventType_EVENT_TYPE_UNSPECIFIED {
		return nil, errors.New("event has no type")
	}
	if err := ValidateToken("pool", ev.Pool); err != nil {
		return nil, fmt.Errorf("event %s: %w", TypeToken(ev.Type), err)
	}
	if err := ValidateToken("instance id", ev.InstanceId); err != nil {
		return nil, fmt.Errorf("event %s: %w", TypeToken(ev.Type), err)
	}
	body, err := wire.Marshal(ev)
	if err != nil {
		return nil, err
	}
	msg := nats.NewMsg(Subject(ev.Pool, ev.InstanceId, ev.Type))
	msg.Data = body
	msg.Header.Set(HeaderSpecVersion, "1.0")
	msg.Header.Set(HeaderID, ev.Id)
	msg.Header.Set(HeaderType, TypePrefix+TypeToken(ev.Type))
	msg.Header.Set(HeaderSource, ev.Source)
	msg.Header.Set(HeaderTime, ev.Time.AsTime().UTC().Format(time.RFC3339Nano))
	msg.Header.Set(HeaderContentType, "application/json")
	msg.Header.Set(jetstream.MsgIDHeader, ev.Id)
	return msg, nil
}

// Decode reads an event body.
func Decode(data []byte) (*livegatev1.Event, error) {
	ev := &livegatev1.Event{}
	if err := wire.Unmarshal(data, ev); err != nil {
		return nil, err
	}
	if ev.Type == livegatev1.EventType_EVENT_TYPE_UNSPECIFIED {
		return nil, errors.New("decode Event: no type")
	}
	return ev, nil
}
