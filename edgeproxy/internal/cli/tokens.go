package cli

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/atomicfile"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/pkg/sessiontoken"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// keyPoll is how often a supervising edge looks for changed session token keys.
const keyPoll = 5 * time.Second

// tokenFlags are the session token flags.
type tokenFlags struct {
	mode, keys string
	leeway     time.Duration
}

func (t *tokenFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&t.mode, "session-token", haproxy.TokensOff, "session access tokens checked by the signaling frontend: off, optional (tokenless clients are let in and counted) or required (docs/session-tokens.md)")
	fs.StringVar(&t.keys, "session-token-keys", "", "directory of the verification keys: <kid>.pem (ES256 public key) and <kid>.hs256 (HS256 secret); changes are picked up within 5s and HAProxy reloaded")
	fs.DurationVar(&t.leeway, "session-token-leeway", sessiontoken.DefaultLeeway, "clock skew allowed on a token's nbf and exp (whole seconds)")
}

// tokens turns the flags into the frontend's token check, reading the keys. Every line of an
// error names where the value at fault came from; with an error the check is off, so nothing
// else reports it again.
func (f *flags) tokens() (haproxy.SessionTokens, error) {
	t := haproxy.SessionTokens{Mode: f.token.mode, Leeway: f.token.leeway}
	switch t.Mode {
	case haproxy.TokensOff:
		return t, nil
	case haproxy.TokensOptional, haproxy.TokensRequired:
	default:
		return haproxy.SessionTokens{}, f.refuse("session-token", "value %q: want off, optional or required", t.Mode)
	}
	if f.driver.External() {
		return haproxy.SessionTokens{}, f.refuse("session-token", "%s: only with --driver runtime; with another driver, add the rules `haproxy-config --session-token=%s` prints to your HAProxy", t.Mode, t.Mode)
	}
	if f.token.leeway < 0 || f.token.leeway%time.Second != 0 {
		return haproxy.SessionTokens{}, f.refuse("session-token-leeway", "value %s: want whole seconds, not negative", f.token.leeway)
	}
	if f.token.keys == "" || !filepath.IsAbs(f.token.keys) {
		return haproxy.SessionTokens{}, f.refuse("session-token-keys", "value %q: --session-token=%s needs the absolute path of the directory of verification keys", f.token.keys, t.Mode)
	}
	keys, err := sessiontoken.LoadVerificationKeys(f.token.keys)
	if err != nil {
		return haproxy.SessionTokens{}, sourceLines(f.src.Source("session-token-keys"), err)
	}
	t.Keys = frontendKeys(keys, f.token.keys)
	for _, a := range []string{sessiontoken.PoolAudience + f.pool, sessiontoken.EdgeAudience + f.edgeID} {
		// An invalid pool or edge id is refused under its own flag.
		if sessiontoken.ValidateAudience(a) == nil {
			t.Audiences = append(t.Audiences, a)
		}
	}
	return t, nil
}

// frontendKeys are keys as the frontend names them: ES256 public keys as <dir>/<kid>.pem.
func frontendKeys(keys []sessiontoken.Key, dir string) []haproxy.TokenKey {
	out := make([]haproxy.TokenKey, 0, len(keys))
	for _, k := range keys {
		tk := haproxy.TokenKey{ID: k.ID, Alg: k.Alg}
		if k.Alg == sessiontoken.HS256 {
			tk.Secret = string(k.Secret)
		} else {
			tk.File = filepath.Join(dir, k.ID+sessiontoken.PublicExt)
		}
		out = append(out, tk)
	}
	return out
}

// sourceLines prefixes every line of err with source, where the value came from.
func sourceLines(source string, err error) error {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = source + ": " + l
	}
	return errors.New(strings.Join(lines, "\n"))
}

// keyCopies is where a supervised HAProxy reads the ES256 public keys from.
func keyCopies(stateDir string) string { return filepath.Join(stateDir, "session-token-keys") }

// copyKeys copies the ES256 public keys the configuration names into keyCopies and points the
// configuration at the copies: a supervised HAProxy reads them at every reload, and the
// operator's directory may change at any moment.
func copyKeys(stateDir string, t haproxy.SessionTokens) (haproxy.SessionTokens, error) {
	if !t.On() {
		return t, nil
	}
	dir := keyCopies(stateDir)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return t, fmt.Errorf("session token key copies: %w", err)
	}
	keys := make([]haproxy.TokenKey, len(t.Keys))
	for i, k := range t.Keys {
		if k.File != "" {
			b, err := os.ReadFile(k.File)
			if err != nil {
				return t, fmt.Errorf("session token key %s: %w", k.ID, err)
			}
			k.File = filepath.Join(dir, k.ID+sessiontoken.PublicExt)
			if err := atomicfile.Write(k.File, b, 0o640); err != nil {
				return t, err
			}
		}
		keys[i] = k
	}
	t.Keys = keys
	return t, nil
}

// pruneKeyCopies removes the copies of keys t no longer has, once HAProxy runs without them.
func pruneKeyCopies(stateDir string, t haproxy.SessionTokens) {
	keep := map[string]bool{}
	for _, k := range t.Keys {
		keep[k.ID+sessiontoken.PublicExt] = true
	}
	entries, _ := os.ReadDir(keyCopies(stateDir))
	for _, e := range entries {
		if !keep[e.Name()] {
			_ = os.Remove(filepath.Join(keyCopies(stateDir), e.Name()))
		}
	}
}

// fingerprint identifies a key set, to notice a change.
func fingerprint(keys []haproxy.TokenKey) [32]byte {
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s\x00%s\x00%s\x00", k.ID, k.Alg, k.Secret)
		if k.File != "" {
			b, _ := os.ReadFile(k.File)
			h.Write(b)
		}
		h.Write([]byte{0})
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// keyWatcher reloads the supervised HAProxy when the verification keys change.
type keyWatcher struct {
	s   *settings
	sup *haproxy.Supervisor
	// beforeReload takes in the old worker's token counts, which its successor starts without.
	beforeReload func(context.Context)
	log          zerolog.Logger
	keys         prometheus.Gauge
	reloads      *prometheus.CounterVec
	current      [32]byte
	lastErr      string
}

func newKeyWatcher(s *settings, sup *haproxy.Supervisor, beforeReload func(context.Context), reg prometheus.Registerer, log zerolog.Logger) *keyWatcher {
	w := &keyWatcher{
		s: s, sup: sup, beforeReload: beforeReload, log: log, current: fingerprint(s.haproxy.Tokens.Keys),
		keys: prometheus.NewGauge(prometheus.GaugeOpts{Name: "livegate_edge_session_token_keys", Help: "Session token verification keys in the running HAProxy configuration."}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "livegate_edge_session_token_reloads_total", Help: "HAProxy reloads for changed session token keys, by result (ok, error)."},
			[]string{"result"}),
	}
	w.keys.Set(float64(len(s.haproxy.Tokens.Keys)))
	w.reloads.WithLabelValues("ok")
	w.reloads.WithLabelValues("error")
	reg.MustRegister(w.keys, w.reloads)
	return w
}

func (w *keyWatcher) Run(ctx context.Context) error {
	t := time.NewTicker(keyPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			w.check(ctx)
		}
	}
}

// check reloads HAProxy once per change of the key directory. A directory that does not load
// (a key half written, a private key dropped in) is logged once and the running keys stay.
func (w *keyWatcher) check(ctx context.Context) {
	tokens, err := w.s.f.tokens()
	if err != nil {
		if msg := err.Error(); msg != w.lastErr {
			w.lastErr = msg
			w.log.Error().Err(err).Msg("session token keys not loaded; HAProxy keeps the keys it has")
		}
		return
	}
	w.lastErr = ""
	fp := fingerprint(tokens.Keys)
	if fp == w.current {
		return
	}
	w.current = fp
	if err := w.reload(ctx, tokens); err != nil {
		w.reloads.WithLabelValues("error").Inc()
		w.log.Error().Err(err).Msg("session token keys changed; HAProxy not reloaded")
		return
	}
	w.reloads.WithLabelValues("ok").Inc()
	w.keys.Set(float64(len(tokens.Keys)))
	ids := make([]string, 0, len(tokens.Keys))
	for _, k := range tokens.Keys {
		ids = append(ids, k.ID)
	}
	w.log.Info().Strs("kids", ids).Msg("session token keys changed; HAProxy reloaded, established websockets stay with the old worker")
}

// reload writes the configuration with tokens and reloads HAProxy; when HAProxy refuses it,
// the previous configuration is put back, so a later restart still starts.
func (w *keyWatcher) reload(ctx context.Context, tokens haproxy.SessionTokens) error {
	c := w.s.haproxy
	c.Tokens = tokens
	previous, err := os.ReadFile(w.s.configFile)
	info, serr := os.Stat(w.s.configFile)
	if err = errors.Join(err, serr); err != nil {
		return fmt.Errorf("read haproxy configuration: %w", err)
	}
	if _, err := writeSupervisedConfig(w.s, c); err != nil {
		return err
	}
	w.beforeReload(ctx)
	if err := w.sup.Reload(ctx); err != nil {
		return errors.Join(err, atomicfile.Write(w.s.configFile, previous, info.Mode().Perm()))
	}
	pruneKeyCopies(w.s.stateDir, tokens)
	return nil
}

// writeSupervisedConfig copies the keys, renders c and writes it when it changed.
func writeSupervisedConfig(s *settings, c haproxy.Config) (bool, error) {
	tokens, err := copyKeys(s.stateDir, c.Tokens)
	if err != nil {
		return false, err
	}
	c.Tokens = tokens
	text, err := haproxy.Render(c)
	if err != nil {
		return false, err
	}
	old, _ := os.ReadFile(s.configFile)
	if string(old) == text {
		return false, nil
	}
	return true, atomicfile.Write(s.configFile, []byte(text), configMode(tokens))
}

// configMode is 0600 when the configuration holds HS256 secrets.
func configMode(t haproxy.SessionTokens) os.FileMode {
	for _, k := range t.Keys {
		if k.Secret != "" {
			return 0o600
		}
	}
	return 0o640
}

// tokenCounter exports the frontend's token checks by result. HAProxy counts in a stick table
// that starts empty with every worker, so the counter adds what each read shows beyond the last
// one, and starts again from zero after a (re)start or reload.
type tokenCounter struct {
	read  func(context.Context) (map[string]uint64, error)
	vec   *prometheus.CounterVec
	mu    sync.Mutex
	last  map[string]uint64
	reset bool
}

func newTokenCounter(read func(context.Context) (map[string]uint64, error)) *tokenCounter {
	c := &tokenCounter{read: read, last: map[string]uint64{}, vec: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "livegate_edge_session_tokens_total",
		Help: "Session token checks by the signaling frontend, by result: valid, tokenless (let in by --session-token=optional) or the refusal reason.",
	}, []string{"result"})}
	for _, r := range haproxy.TokenResults {
		c.vec.WithLabelValues(r)
	}
	return c
}

// Restarted says HAProxy's counts start again from zero.
func (c *tokenCounter) Restarted() {
	c.mu.Lock()
	c.reset = true
	c.mu.Unlock()
}

// add takes in one read of the counts.
func (c *tokenCounter) add(counts map[string]uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reset {
		c.last, c.reset = map[string]uint64{}, false
	}
	for result, n := range counts {
		prev := c.last[result]
		if n < prev {
			prev = 0 // an operator's HAProxy reloaded behind our back
		}
		if n > prev {
			c.vec.WithLabelValues(result).Add(float64(n - prev))
		}
		c.last[result] = n
	}
}

func (c *tokenCounter) Describe(ch chan<- *prometheus.Desc) { c.vec.Describe(ch) }

// Poll takes in HAProxy's counts now; a failed read leaves the counter as it was.
func (c *tokenCounter) Poll(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if counts, err := c.read(ctx); err == nil {
		c.add(counts)
	}
}

// Collect polls first, so a scrape sees the counts of the moment.
func (c *tokenCounter) Collect(ch chan<- prometheus.Metric) {
	c.Poll(context.Background())
	c.vec.Collect(ch)
}
