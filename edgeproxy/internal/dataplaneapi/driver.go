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
	// PasswordFile, when set, is where Password came from: it is read again when the API answers
	// 401, so that correcting the file needs no restart.
	PasswordFile string
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

	// mapMu serialises map changes and reads; syncPending says runtime changes were made that no
	// force_sync has written to the map file yet.
	mapMu       sync.Mutex
	syncPending bool
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
			base: u, user: cfg.User, password: cfg.Password, passwordFile: cfg.PasswordFile,
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
	d.c.log = d.log
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
	runtimePath = "/services/haproxy/runtime/"
	entriesPath = runtimePath + "maps_entries"
	mapsPath    = runtimePath + "maps"
)

func (d *Driver) mapQuery(sync bool) url.Values {
	q := url.Values{"map": {d.mapName}}
	if sync {
		q.Set("force_sync", "true")
	}
	return q
}

// Apply sets and deletes map entries one call each. A set is an add, or a replace when the key
// exists (409). Only the last call of a batch carries force_sync: the API rewrites the whole map
// file on each force_sync, so one per batch keeps the cost of a change from growing with the map,
// and the file still holds the batch when Apply returns. A delete answered 404 is done only once
// a read of the map confirms the key is gone: the API answers 404 too when HAProxy is unreachable.
// An answer saying HAProxy is unreachable, whatever its status, is retried and then stops the
// batch, as a 401 does. Every call is safe to repeat; other failures do not stop the others.
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
	d.mapMu.Lock()
	defer d.mapMu.Unlock()
	var dels []string
	for _, k := range del {
		if _, ok := set[k]; !ok {
			dels = append(dels, k)
		}
	}
	keys := slices.Sorted(maps.Keys(set))
	b := &batch{d: d, ctx: ctx}
	bulk := len(keys)+len(dels) >= bulkMin
	if bulk {
		have, err := d.list(ctx)
		if err != nil {
			return err
		}
		keys, dels = b.plan(have, set, keys, dels)
	}
	b.total = len(dels) + len(keys)
	if len(keys) > 0 && bulk && b.payload {
		keys = b.addAll(set, keys)
	}
	for _, k := range dels {
		if b.stop {
			break
		}
		b.run(fmt.Sprintf("delete route %s", k), func(sync bool) error { return b.deleteEntry(k, sync) })
	}
	for _, k := range keys {
		if b.stop {
			break
		}
		b.run(fmt.Sprintf("set route %s", k), func(sync bool) error { return d.setEntry(ctx, k, set[k], sync) })
	}
	if b.stop {
		return errors.Join(b.errs...)
	}
	var want map[string]string
	if bulk && b.wrote {
		want = set
	}
	b.confirm(want)
	return errors.Join(b.errs...)
}

// Large batches (an edge starting with many routes, a resync after an outage) read the map once,
// skip what is already right and are checked against a read of the map afterwards.
const bulkMin = 256

// batch is one Apply's calls: which one carries force_sync, which deletes await confirmation.
type batch struct {
	d           *Driver
	ctx         context.Context
	total, done int
	wrote       bool
	// payload: the map was empty, so every key may go in one payload call.
	payload     bool
	unconfirmed []string
	errs        []error
	stop        bool
}

// plan drops from keys and dels what the map have already agrees with.
func (b *batch) plan(have, set map[string]string, keys, dels []string) ([]string, []string) {
	b.payload = len(have) == 0
	var ks, ds []string
	for _, k := range keys {
		if v, ok := have[k]; !ok || v != set[k] {
			ks = append(ks, k)
		}
	}
	for _, k := range dels {
		if _, ok := have[k]; ok {
			ds = append(ds, k)
		}
	}
	return ks, ds
}

// run makes one call, the last of the batch with force_sync, and records its failure. A call that
// failed may have changed the map, so it leaves a force_sync owed, as one that succeeded without
// force_sync does.
func (b *batch) run(what string, call func(sync bool) error) {
	b.done++
	b.wrote = true
	last := b.done == b.total
	err := call(last)
	switch {
	case errors.Is(err, errNoChange):
	case err == nil:
		b.d.syncPending = !last
	default:
		b.d.syncPending = true
		b.fail(fmt.Errorf("%s: %w", what, err))
	}
}

func (b *batch) fail(err error) {
	b.errs = append(b.errs, err)
	b.stop = b.stop || statusOf(err) == http.StatusUnauthorized || haproxyDown(err) || b.ctx.Err() != nil
}

// addAll adds every key of an empty map in one payload call and returns the keys still to set one
// by one: none, or all of them when the payload failed. The map being empty matters: the real
// server adds a small payload to the map but makes a large one (over 8 KiB) the whole map, so only
// a payload of the whole desired map is right both ways. A failed payload is not repeated (it
// could add duplicates); the per-entry add answers 409 for whatever it did add.
func (b *batch) addAll(set map[string]string, keys []string) []string {
	body := make([]mapEntry, len(keys))
	for i, k := range keys {
		body[i] = mapEntry{Key: k, Value: set[k]}
	}
	q := url.Values{"force_sync": {"true"}}
	b.wrote = true
	_, err := b.d.c.do(b.ctx, request{method: http.MethodPut, path: mapsPath + "/" + b.d.mapName, query: q, body: body})
	if err == nil {
		b.total -= len(keys)
		b.d.syncPending = false
		return nil
	}
	if statusOf(err) == http.StatusUnauthorized || haproxyDown(err) {
		b.fail(fmt.Errorf("add %d routes: %w", len(keys), err))
		return nil
	}
	b.d.log.Warn().Err(err).Int("routes", len(keys)).Msg("bulk add of routes failed; adding them one by one")
	return keys
}

// deleteEntry deletes k; a 404 that does not say HAProxy is unreachable leaves k to confirm.
func (b *batch) deleteEntry(k string, sync bool) error {
	_, err := b.d.c.do(b.ctx, request{method: http.MethodDelete, path: entriesPath + "/" + k, query: b.d.mapQuery(sync), retry: true})
	if statusOf(err) == http.StatusNotFound && !haproxyDown(err) {
		b.unconfirmed = append(b.unconfirmed, k)
		return errNoChange
	}
	return err
}

// errNoChange is a call that changed nothing, so its force_sync, if it had one, did not happen.
var errNoChange = errors.New("no change")

// confirm reads the map when the batch needs it (deletes answered 404, a large batch: want is
// then the keys set) and fails for every key the map disagrees on. It also writes the map file
// when a force_sync is still owed.
func (b *batch) confirm(want map[string]string) {
	if want == nil && len(b.unconfirmed) == 0 && !b.d.syncPending {
		return
	}
	have, err := b.d.list(b.ctx)
	if err != nil {
		b.errs = append(b.errs, fmt.Errorf("confirm %d route changes: %w", len(want)+len(b.unconfirmed), err))
		return
	}
	for _, k := range b.unconfirmed {
		if _, ok := have[k]; ok {
			b.errs = append(b.errs, fmt.Errorf("delete route %s: the api answered 404 but the map still holds it", k))
		}
	}
	var wrong []string
	for k, v := range want {
		if have[k] != v {
			wrong = append(wrong, k)
		}
	}
	if len(wrong) > 0 {
		slices.Sort(wrong)
		b.errs = append(b.errs, fmt.Errorf("%d of %d routes set are not in the map as set (first: %s); the api answered success", len(wrong), len(want), wrong[0]))
	}
	if b.d.syncPending {
		if err := b.d.syncFile(b.ctx, have); err != nil {
			b.errs = append(b.errs, err)
		}
	}
}

// syncFile makes the API write the map file from the runtime map have, with a call that changes
// nothing: a replace of one entry by its own value, or the clearing of a map that is empty.
func (d *Driver) syncFile(ctx context.Context, have map[string]string) error {
	var err error
	if len(have) == 0 {
		_, err = d.c.do(ctx, request{method: http.MethodDelete, path: mapsPath + "/" + d.mapName, query: url.Values{"force_sync": {"true"}}, retry: true})
	} else {
		k := slices.Min(slices.Collect(maps.Keys(have)))
		_, err = d.c.do(ctx, request{method: http.MethodPut, path: entriesPath + "/" + k, query: d.mapQuery(true), body: mapValue{Value: have[k]}, retry: true})
	}
	if err != nil {
		return fmt.Errorf("write the map file (force_sync): %w", err)
	}
	d.syncPending = false
	return nil
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

func (d *Driver) setEntry(ctx context.Context, k, v string, sync bool) error {
	// Two rounds cover an entry deleted by someone else between our add's 409 and our replace.
	var err error
	for range 2 {
		_, err = d.c.do(ctx, request{method: http.MethodPost, path: entriesPath, query: d.mapQuery(sync), body: mapEntry{Key: k, Value: v}, retry: true})
		if statusOf(err) != http.StatusConflict {
			return err
		}
		_, err = d.c.do(ctx, request{method: http.MethodPut, path: entriesPath + "/" + k, query: d.mapQuery(sync), body: mapValue{Value: v}, retry: true})
		if statusOf(err) != http.StatusNotFound || haproxyDown(err) {
			return err
		}
	}
	return err
}

// List reads the runtime map. When a key appears twice, the first entry is the one HAProxy
// matches, so it wins. A force_sync an earlier Apply could not make is made here, so that the
// map file catches up even when the map needs no change.
func (d *Driver) List(ctx context.Context) (map[string]string, error) {
	if err := d.ensureSetup(ctx); err != nil {
		return nil, err
	}
	d.mapMu.Lock()
	defer d.mapMu.Unlock()
	m, err := d.list(ctx)
	if err != nil || !d.syncPending {
		return m, err
	}
	if err := d.syncFile(ctx, m); err != nil {
		return nil, err
	}
	return m, nil
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
