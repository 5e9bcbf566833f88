package dataplaneapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// APIError is an answer of the Data Plane API that is not a success, with the API's own message.
type APIError struct {
	Method  string
	Path    string
	Status  int
	Message string
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	if e.Status == http.StatusUnauthorized {
		return fmt.Sprintf("data plane api %s %s: 401 unauthorized (check --dataplaneapi-user and --dataplaneapi-password-file): %s", e.Method, e.Path, msg)
	}
	return fmt.Sprintf("data plane api %s %s: %d: %s", e.Method, e.Path, e.Status, msg)
}

// statusOf returns the HTTP status of an APIError in err's chain, or 0.
func statusOf(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

// transient reports whether err may go away by itself: a transport failure, a timeout of one
// attempt, too many open transactions or a server-side error. 4xx answers other than 429 are final.
func transient(err error) bool {
	if err == nil {
		return false
	}
	if s := statusOf(err); s != 0 {
		return s >= 500 || s == http.StatusTooManyRequests
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

type client struct {
	base     *url.URL
	user     string
	password string
	hc       *http.Client
	timeout  time.Duration
	attempts int
	backoff  time.Duration
	sleep    func(context.Context, time.Duration) error
}

// request is one call. Retry is set only for calls that are safe to repeat: reads, and map entry
// writes whose repetition the caller reconciles (409 on add, 404 on delete).
type request struct {
	method string
	path   string
	query  url.Values
	body   any
	out    any
	retry  bool
}

type response struct {
	status int
	header http.Header
}

func (c *client) do(ctx context.Context, r request) (response, error) {
	attempts := 1
	if r.retry {
		attempts = c.attempts
	}
	wait := c.backoff
	var (
		resp response
		err  error
	)
	for i := 0; i < attempts; i++ {
		if i > 0 {
			if serr := c.sleep(ctx, wait); serr != nil {
				return resp, fmt.Errorf("%w (retry stopped: %w)", err, serr)
			}
			wait *= 2
		}
		resp, err = c.once(ctx, r)
		if !transient(err) || ctx.Err() != nil {
			return resp, err
		}
	}
	return resp, err
}

func (c *client) once(ctx context.Context, r request) (response, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	u := *c.base
	u.Path = strings.TrimSuffix(u.Path, "/") + r.path
	u.RawQuery = r.query.Encode()
	var body io.Reader
	if r.body != nil {
		b, err := json.Marshal(r.body)
		if err != nil {
			return response{}, fmt.Errorf("encode %s %s: %w", r.method, r.path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), body)
	if err != nil {
		return response{}, fmt.Errorf("data plane api %s %s: %w", r.method, r.path, err)
	}
	req.SetBasicAuth(c.user, c.password)
	req.Header.Set("Accept", "application/json")
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.hc.Do(req)
	if err != nil {
		// url.Error carries the full URL; the password is never part of it (basic auth is a header).
		return response{}, fmt.Errorf("data plane api %s %s: %w", r.method, r.path, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, 32<<20))
	out := response{status: res.StatusCode, header: res.Header}
	if err != nil {
		return out, fmt.Errorf("data plane api %s %s: read answer: %w", r.method, r.path, err)
	}
	if res.StatusCode >= 300 {
		return out, &APIError{Method: r.method, Path: r.path, Status: res.StatusCode, Message: errorMessage(data)}
	}
	if r.out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, r.out); err != nil {
			return out, fmt.Errorf("data plane api %s %s: decode answer: %w", r.method, r.path, err)
		}
	}
	return out, nil
}

func errorMessage(data []byte) string {
	var e apiError
	if json.Unmarshal(data, &e) == nil && e.Message != nil {
		return *e.Message
	}
	s := strings.TrimSpace(string(data))
	if len(s) > 512 {
		s = s[:512] + "…"
	}
	return s
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
