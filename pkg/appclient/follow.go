package appclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Notification is one server-sent event of the agent's GET /v1/app/events stream.
type Notification struct {
	// Event is the kind: stun-credentials, endpoint-assigned or session-ended.
	Event string
	// Data is the event's JSON.
	Data []byte
}

// maxEventLine bounds one line of the stream; the agent's events are a few hundred bytes.
const maxEventLine = 64 << 10

// Follow reads http://agentAddr/v1/app/events and hands every notification to handle, in order,
// until ctx ends. A dropped stream is opened again (the agent replays what a late subscriber must
// know, so nothing is missed), after a backoff that grows to a second.
func Follow(ctx context.Context, agentAddr string, log zerolog.Logger, handle func(Notification)) {
	url := "http://" + agentAddr + "/v1/app/events"
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := followOnce(ctx, url, handle, func() { backoff = 100 * time.Millisecond })
		if ctx.Err() != nil {
			return
		}
		log.Debug().Err(err).Str("url", url).Msg("agent event stream ended; opening it again")
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

// followOnce reads one stream until it ends; connected is called once the agent answered.
func followOnce(ctx context.Context, url string, handle func(Notification), connected func()) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("agent event stream: answer %s", resp.Status)
	}
	connected()
	return ReadEvents(resp.Body, handle)
}

// ReadEvents parses server-sent events ("event:" and "data:" lines, a blank line ends each; other
// fields and comments are skipped) until r ends, as Follow reads the agent's stream.
func ReadEvents(r io.Reader, handle func(Notification)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxEventLine)
	var n Notification
	var data []string
	for sc.Scan() {
		line := sc.Text()
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch {
		case line == "":
			if n.Event != "" || len(data) > 0 {
				n.Data = []byte(strings.Join(data, "\n"))
				handle(n)
			}
			n, data = Notification{}, nil
		case field == "event":
			n.Event = value
		case field == "data":
			data = append(data, value)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return errors.New("agent closed the event stream")
}
