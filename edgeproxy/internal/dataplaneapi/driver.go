// Package dataplaneapi is the haproxy.Driver that changes HAProxy only through a Data Plane API v2
// server: session routes are runtime map entries (persisted to the map file with force_sync), and
// the livegate frontend and backend are set up once through a configuration transaction.
package dataplaneapi

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/pkg/sessionid"
)

// Config says where the Data Plane API is and which map it drives.
type Config struct {
	// URL is the API's address, e.g. http://127.0.0.1:5555; "/v2" is added unless it is there.
	URL      string
	User     string
	Password string
	// Map names the session map in runtime map calls as the Data Plane API does: the map file's
	// name without ".map", the file being in the API's maps directory (see MapName).
	Map string
	// Proxy, when set, is the frontend and backend the driver makes sure exist, once, before its
	// first Apply or List (see Setup).
	Proxy *Proxy
}

// Option changes a Driver's defaults.
type Option func(*Driver)

// WithLogger sets the logger. Default: no logging.
func WithLogger(l zerolog.Logger) Option { return func(d *Driver) { d.log = l } }

// WithRequestTimeout bounds each HTTP request. Default 10s.
func WithRequestTimeout(t time.Duration) Option { return func(d *Driver) { d.c.timeout = t } }

// WithRetry sets how many times a call that is safe to repeat is tried, and the first wait
// between tries (doubled each time). Default 4 tries, 200ms.
func WithRetry(attempts int, backoff time.Duration) Option {
	return func(d *Driver) { d.c.attempts, d.c.backoff = max(attempts, 1), backoff }
}

// WithTransactionAttempts sets how many times the set-up transaction is started over after a
// version conflict or a transient failure. Default 3.
func WithTransactionAttempts(n int) Option { return func(d *Driver) { d.txAttempts = max(n, 1) } }

// WithReloadPoll sets how often a reload's status is read while it is in progress, and how long
// it may stay in progress. Default 250ms, 2m.
func WithReloadPoll(every, timeout time.Duration) Option {
	return func(d *Driver) { d.reloadPoll, d.reloadTimeout = every, timeout }
}

// Driver is the haproxy.Driver over the Data Plane API. It is safe for concurrent use.
type Driver struct {
	c             *client
	mapName       string
	proxy         *Proxy
	log           zerolog.Logger
	txAttempts    int
	reloadPoll    time.Duration
	reloadTimeout time.Duration

	setupMu   sync.Mutex
	setupDone bool
}

var _ haproxy.Driver = (*Driver)(nil)

// New checks cfg and returns a driver; it sends nothing yet.
func New(cfg Config, opts ...Option) (*Driver, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("data plane api url %q: want http(s)://host:port", redactUserinfo(cfg.URL))
	}
	if u.User != nil {
		return nil, errors.New("data plane api url: put the user in --dataplaneapi-user and the password in --dataplaneapi-password-file, not in the url")
	}
	u.RawQuery, u.Fragment = "", ""
	u.Path = strings.TrimSuffix(u.Path, "/")
	if !strings.HasSuffix(u.Path, "/v2") {
		u.Path += "/v2"
	}
	if cfg.User == "" {
		return nil, errors.New("data plane api: user is empty")
	}
	if cfg.Map == "" || strings.ContainsAny(cfg.Map, "\r\n<>*;$#&{}\"") {
		return nil, fmt.Errorf("data plane api map %q: empty or has a character the api refuses", cfg.Map)
	}
	d := &Driver{
		c: &client{
			base: u, user: cfg.User, password: cfg.Password,
			hc: &http.Client{}, timeout: 10 * time.Second, attempts: 4, backoff: 200 * time.Millisecond,
			sleep: sleepCtx,
		},
		mapName:       cfg.Map,
		proxy:         cfg.Proxy,
		log:           zerolog.Nop(),
		txAttempts:    3,
		reloadPoll:    250 * time.Millisecond,
		reloadTimeout: 2 * time.Minute,
	}
	for _, o := range opts {
		o(d)
	}
	return d, nil
}

// redactUserinfo hides everything before the last '@' of a URL that failed to parse, but an
// http:// or https:// scheme: "u:pw@host:5555" parses as scheme "u" with no user, so
// url.URL.Redacted cannot be relied on to keep a password out of the error and the logs.
func redactUserinfo(raw string) string {
	at := strings.LastIndex(raw, "@")
	if at < 0 {
		return raw
	}
	scheme := ""
	for _, s := range []string{"http://", "https://"} {
		if len(s) <= at && strings.EqualFold(raw[:len(s)], s) {
			scheme = raw[:len(s)]
		}
	}
	return scheme + "xxxxx" + raw[at:]
}

// MapName is the Data Plane API's name of the map file at path: its base name without ".map".
// The API resolves it to <maps_dir>/<name>.map, or to the loaded map whose file has that base name.
func MapName(path string) string {
	return strings.TrimSuffix(filepath.Base(path), ".map")
}

// ReadPasswordFile returns the password in path without its trailing newline.
func ReadPasswordFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("data plane api password file: %w", err)
	}
	p := strings.TrimRight(string(b), "\r\n")
	if p == "" {
		return "", fmt.Errorf("data plane api password file %s is empty", path)
	}
	return p, nil
}

const (
	entriesPath = "/services/haproxy/runtime/maps_entries"
	mapsPath    = "/services/haproxy/runtime/maps"
)

func (d *Driver) mapQuery(sync bool) url.Values {
	q := url.Values{"map": {d.mapName}}
	if sync {
		q.Set("force_sync", "true")
	}
	return q
}

// Apply sets and deletes map entries one call each, every call with force_sync so the map file
// follows. A set is an add, or a replace when the key exists (409); a delete of a missing key
// (404) is done. Every call is safe to repeat, so transient failures are retried. Entries that
// fail do not stop the others; a 401 stops everything.
func (d *Driver) Apply(ctx context.Context, set map[string]string, del []string) error {
	for k, v := range set {
		if err := checkEntry(k, v); err != nil {
			return err
		}
	}
	for _, k := range del {
		if err := sessionid.Validate(k); err != nil {
			return fmt.Errorf("delete route %q: %w", k, err)
		}
	}
	if err := d.ensureSetup(ctx); err != nil {
		return err
	}
	var errs []error
	fail := func(err error) bool {
		errs = append(errs, err)
		return statusOf(err) == http.StatusUnauthorized || ctx.Err() != nil
	}
	for _, k := range del {
		if _, ok := set[k]; ok {
			continue
		}
		if err := d.deleteEntry(ctx, k); err != nil && fail(fmt.Errorf("delete route %s: %w", k, err)) {
			return errors.Join(errs...)
		}
	}
	keys := slices.Sorted(maps.Keys(set))
	if len(keys) >= bulkMin {
		var err error
		if keys, err = d.addMissing(ctx, set, keys); err != nil && fail(err) {
			return errors.Join(errs...)
		}
	}
	for _, k := range keys {
		if err := d.setEntry(ctx, k, set[k]); err != nil && fail(fmt.Errorf("set route %s: %w", k, err)) {
			return errors.Join(errs...)
		}
	}
	return errors.Join(errs...)
}

// Large sets (an edge starting with many routes) read the map once, skip what is already right
// and add the missing keys with one payload call per bulkChunk entries instead of one call each.
const (
	bulkMin   = 32
	bulkChunk = 500
)

// addMissing adds the keys of set the map lacks in bulk and returns the keys still to set one by
// one: those with another value, and those of a chunk whose bulk add failed. A payload add is not
// safe to repeat (it would add duplicates), so a failed chunk is never retried as a payload; its
// keys go through the per-entry add, which answers 409 for whatever the chunk did add.
func (d *Driver) addMissing(ctx context.Context, set map[string]string, keys []string) ([]string, error) {
	have, err := d.list(ctx)
	if err != nil {
		return keys, err
	}
	var rest, missing []string
	for _, k := range keys {
		v, ok := have[k]
		switch {
		case !ok:
			missing = append(missing, k)
		case v != set[k]:
			rest = append(rest, k)
		}
	}
	for start := 0; start < len(missing); start += bulkChunk {
		chunk := missing[start:min(start+bulkChunk, len(missing))]
		body := make([]mapEntry, len(chunk))
		for i, k := range chunk {
			body[i] = mapEntry{Key: k, Value: set[k]}
		}
		q := url.Values{"force_sync": {"true"}}
		if _, err := d.c.do(ctx, request{method: http.MethodPut, path: mapsPath + "/" + d.mapName, query: q, body: body}); err != nil {
			if statusOf(err) == http.StatusUnauthorized {
				return nil, fmt.Errorf("add %d routes: %w", len(chunk), err)
			}
			d.log.Warn().Err(err).Int("routes", len(chunk)).Msg("bulk add of routes failed; adding them one by one")
			rest = append(rest, chunk...)
		}
	}
	return rest, nil
}

func checkEntry(k, v string) error {
	if err := sessionid.Validate(k); err != nil {
		return fmt.Errorf("set route %q: %w", k, err)
	}
	if _, err := netip.ParseAddrPort(v); err != nil {
		return fmt.Errorf("set route %s: backend %q: %w", k, v, err)
	}
	return nil
}

func (d *Driver) setEntry(ctx context.Context, k, v string) error {
	// Two rounds cover an entry deleted by someone else between our add's 409 and our replace.
	var err error
	for range 2 {
		_, err = d.c.do(ctx, request{method: http.MethodPost, path: entriesPath, query: d.mapQuery(true), body: mapEntry{Key: k, Value: v}, retry: true})
		if statusOf(err) != http.StatusConflict {
			return err
		}
		_, err = d.c.do(ctx, request{method: http.MethodPut, path: entriesPath + "/" + k, query: d.mapQuery(true), body: mapValue{Value: v}, retry: true})
		if statusOf(err) != http.StatusNotFound {
			return err
		}
	}
	return err
}

func (d *Driver) deleteEntry(ctx context.Context, k string) error {
	_, err := d.c.do(ctx, request{method: http.MethodDelete, path: entriesPath + "/" + k, query: d.mapQuery(true), retry: true})
	if statusOf(err) == http.StatusNotFound {
		return nil
	}
	return err
}

// List reads the runtime map. When a key appears twice, the first entry is the one HAProxy
// matches, so it wins.
func (d *Driver) List(ctx context.Context) (map[string]string, error) {
	if err := d.ensureSetup(ctx); err != nil {
		return nil, err
	}
	return d.list(ctx)
}

func (d *Driver) list(ctx context.Context) (map[string]string, error) {
	var entries []mapEntry
	if _, err := d.c.do(ctx, request{method: http.MethodGet, path: entriesPath, query: d.mapQuery(false), out: &entries, retry: true}); err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	m := make(map[string]string, len(entries))
	for _, e := range entries {
		if _, dup := m[e.Key]; !dup {
			m[e.Key] = e.Value
		}
	}
	return m, nil
}

func (d *Driver) ensureSetup(ctx context.Context) error {
	if d.proxy == nil {
		return nil
	}
	d.setupMu.Lock()
	defer d.setupMu.Unlock()
	if d.setupDone {
		return nil
	}
	if err := d.setup(ctx); err != nil {
		return err
	}
	d.setupDone = true
	return nil
}
