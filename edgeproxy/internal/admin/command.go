package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/placement"
)

// DrainOp is what a drain request asks of the edge.
type DrainOp int

// The drain requests: start (or move the deadline of) a drain, cancel it, or show it.
const (
	DrainStart DrainOp = iota
	DrainCancel
	DrainShow
)

// RequestDrain asks the edge whose admin endpoint is at addr (host:port) to start draining
// (POST /v1/drain, deadline from now, 0 for none), to stop (DELETE) or how it stands (GET), and
// returns the drain state it answers with.
func RequestDrain(ctx context.Context, addr string, op DrainOp, deadline time.Duration) (placement.Drain, error) {
	method, u := http.MethodPost, url.URL{Scheme: "http", Host: addr, Path: "/v1/drain"}
	switch op {
	case DrainCancel:
		method = http.MethodDelete
	case DrainShow:
		method = http.MethodGet
	default:
		u.RawQuery = url.Values{"deadline": {deadline.String()}}.Encode()
	}
	return call(ctx, method, u.String())
}

func call(ctx context.Context, method, u string) (placement.Drain, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d placement.Drain
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return d, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return d, fmt.Errorf("%s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return d, fmt.Errorf("%s %s: %w", method, u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return d, fmt.Errorf("%s %s: HTTP %d: %s", method, u, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, &d); err != nil {
		return d, fmt.Errorf("%s %s: %w", method, u, err)
	}
	return d, nil
}
