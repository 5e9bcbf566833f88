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
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// APIError is an answer of the Data Plane API that is not a success, with the API's own message.
// The message of a 401 is never kept (the real server echoes the password it was sent), and any
// other message has the password sent masked.
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
	switch {
	case e.Status == http.StatusUnauthorized:
		return fmt.Sprintf("data plane api %s %s: 401 unauthorized (check --dataplaneapi-user and --dataplaneapi-password-file)", e.Method, e.Path)
	case e.HAProxyUnreachable():
		return fmt.Sprintf("data plane api %s %s: %d: haproxy unreachable from the data plane api: %s", e.Method, e.Path, e.Status, msg)
	}
	return fmt.Sprintf("data plane api %s %s: %d: %s", e.Method, e.Path, e.Status, msg)
}

// HAProxyUnreachable reports an answer to a runtime call that says the API could not reach
// HAProxy's runtime socket. The real server gives it no status of its own (v2.9: 404 to a delete,
// 400 to an add), so only its message tells it from a missing entry or a bad request. Configuration calls are left out: there a missing file is the operator's.
func (e *APIError) HAProxyUnreachable() bool {
	if !strings.HasPrefix(e.Path, runtimePath) {
		return false
	}
	m := strings.ToLower(e.Message)
	return strings.Contains(m, "connection refused") || strings.Contains(m, "connect: no such file or directory") || strings.Contains(m, "connection reset")
}

// statusOf returns the HTTP status of an APIError in err's chain, or 0.
func statusOf(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

// haproxyDown reports whether err is an answer saying HAProxy could not be reached.
func haproxyDown(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.HAProxyUnreachable()
}

// transient reports whether err may go away by itself: a transport failure, a timeout of one
// attempt, too many open transactions, a server-side error or HAProxy unreachable behind the API
// (whatever the status). Other 4xx answers are final.
func transient(err error) bool {
	if err == nil {
		return false
	}
	if haproxyDown(err) {
		return true
	}
	if s := statusOf(err); s != 0 {
		return s >= 500 || s == http.StatusTooManyRequests
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

type client struct {
	base *url.URL
	user string
	// passwordFile, when set, is read again on a 401, so a corrected password needs no restart.
	passwordFile string
	log          zerolog.Logger
	pwMu         sync.Mutex
	password     string
	hc           *http.Client
	timeout      time.Duration
	attempts     int
	backoff      time.Duration
	sleep        func(context.Context, time.Duration) error
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
	reread := false
	for i := 0; i < attempts; i++ {
		if i > 0 && !reread {
			if serr := c.sleep(ctx, wait); serr != nil {
				return resp, fmt.Errorf("%w (retry stopped: %w)", err, serr)
			}
			wait *= 2
		}
		sent := c.currentPassword()
		resp, err = c.once(ctx, r, sent)
		if statusOf(err) == http.StatusUnauthorized && !reread && c.rereadPassword(sent) {
			// The same request once more with the password the file holds now.
			reread = true
			i--
			continue
		}
		reread = false
		if !transient(err) || ctx.Err() != nil {
			return resp, err
		}
	}
	return resp, err
}

func (c *client) currentPassword() string {
	c.pwMu.Lock()
	defer c.pwMu.Unlock()
	return c.password
}

// rereadPassword reads the password file again after a 401 to a request sent with sent, and
// reports whether the password changed.
func (c *client) rereadPassword(sent string) bool {
	if c.passwordFile == "" {
		return false
	}
	p, err := ReadPasswordFile(c.passwordFile)
	if err != nil {
		c.log.Warn().Err(err).Msg("data plane api answered 401; password file not read again")
		return false
	}
	c.pwMu.Lock()
	defer c.pwMu.Unlock()
	if p == sent {
		return false
	}
	if c.password == sent {
		c.password = p
		c.log.Info().Str("password_file", c.passwordFile).Msg("data plane api answered 401; using the password the file holds now")
	}
	return true
}

func (c *client) once(ctx context.Context, r request, password string) (response, error) {
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
	req.SetBasicAuth(c.user, password)
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
	if res.StatusCode == http.StatusUnauthorized {
		return out, &APIError{Method: r.method, Path: r.path, Status: res.StatusCode}
	}
	if res.StatusCode >= 300 {
		return out, &APIError{Method: r.method, Path: r.path, Status: res.StatusCode, Message: mask(errorMessage(data), password)}
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

// mask hides the password sent wherever an answer repeats it.
func mask(msg, password string) string {
	if password == "" {
		return msg
	}
	return strings.ReplaceAll(msg, password, "xxxxx")
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
