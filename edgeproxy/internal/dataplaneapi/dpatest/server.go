// Package dpatest is an in-memory Data Plane API v2 server for tests. Every request (and every
// answer) is validated against the API's OpenAPI document; it enforces basic auth and the
// configuration version (409 on a stale version, 406 on committing an outdated transaction),
// implements transactions and reloads, and keeps runtime map entries in a MapStore, which can be
// a real HAProxy's runtime API.
package dpatest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
)

// Options configure a Server.
type Options struct {
	User, Password string
	// Maps keeps the runtime maps. Default: NewMemoryMaps().
	Maps MapStore
	// ReloadPolls is how many reads of a reload answer in_progress before it finishes. Default 1.
	ReloadPolls int
	// OnReload, when set, gets the rendered configuration when a reload runs; an error makes
	// the reload fail with its text.
	OnReload func(config string) error
}

// Request is one request the server answered.
type Request struct {
	Method      string
	Path        string
	Query       url.Values
	OperationID string
	Status      int
}

// Fault makes the next Count requests matching Method and OperationID fail: with Status, or,
// when Status is 0, by not answering until the client gives up. With Applied the server carries
// the request out first and only the answer is lost, as when a response times out in transit.
type Fault struct {
	Method      string
	OperationID string
	Status      int
	Count       int
	Message     string
	Applied     bool
}

type tx struct {
	id      string
	version int64
	status  string
	cfg     *Config
}

type reloadState struct {
	polls    int
	status   string
	response string
	config   string
}

// Server is the fake Data Plane API.
type Server struct {
	URL  string
	opts Options
	spec *Spec

	mu         sync.Mutex
	version    int64
	live       *Config
	txs        map[string]*tx
	reloads    map[string]*reloadState
	reloadSeq  int
	faults     []*Fault
	onRequest  func(op string)
	requests   []Request
	violations []string
}

// Start serves a fake Data Plane API on loopback until the end of the test.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	sp, err := LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	if o.Maps == nil {
		o.Maps = NewMemoryMaps()
	}
	if o.ReloadPolls == 0 {
		o.ReloadPolls = 1
	}
	s := &Server{opts: o, spec: sp, version: 1, live: newConfig(), txs: map[string]*tx{}, reloads: map[string]*reloadState{}}
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	s.URL = hs.URL
	return s
}

// SetPassword changes the user's password, as an operator rotating it would.
func (s *Server) SetPassword(p string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.Password = p
}

func (s *Server) password() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opts.Password
}

// Version is the configuration version.
func (s *Server) Version() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// BumpVersion stands for a change made by someone else.
func (s *Server) BumpVersion() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.version++
}

// OpenTransactions is how many transactions were started and neither committed nor deleted.
func (s *Server) OpenTransactions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.txs)
}

// Requests returns the requests answered so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Violations returns every request and answer that broke the OpenAPI document.
func (s *Server) Violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.violations...)
}

// AddFault injects a failure.
func (s *Server) AddFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &f)
}

// OnRequest sets a function called with each valid request's operation id before it is handled.
func (s *Server) OnRequest(f func(op string)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onRequest = f
}

// Render is the committed configuration as HAProxy configuration text.
func (s *Server) Render() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live.Render()
}

// Edit changes the committed configuration directly, bumping the version, as an operator's
// edit would.
func (s *Server) Edit(f func(c *Config)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s.live)
	s.version++
}

// answer is a handler's result.
type answer struct {
	status int
	header http.Header
	body   any
}

func errAnswer(status int, format string, args ...any) answer {
	return answer{status: status, body: map[string]any{"code": status, "message": fmt.Sprintf(format, args...)}}
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.Query()}
	a, input := s.serve(r, body, &rec)
	var data []byte
	if a.body != nil {
		data, _ = json.Marshal(a.body)
	}
	if input != nil {
		err := openapi3filter.ValidateResponse(r.Context(), &openapi3filter.ResponseValidationInput{
			RequestValidationInput: input, Status: a.status, Header: jsonHeader(a.header, data), Body: io.NopCloser(bytes.NewReader(data)),
			Options: &openapi3filter.Options{IncludeResponseStatus: true},
		})
		if err != nil {
			s.violate(fmt.Sprintf("answer %d to %s %s: %v", a.status, r.Method, r.URL, err))
		}
	}
	rec.Status = a.status
	s.mu.Lock()
	s.requests = append(s.requests, rec)
	s.mu.Unlock()
	for k, v := range jsonHeader(a.header, data) {
		w.Header()[k] = v
	}
	w.WriteHeader(a.status)
	_, _ = w.Write(data)
}

func jsonHeader(h http.Header, data []byte) http.Header {
	out := http.Header{}
	for k, v := range h {
		out[k] = v
	}
	if len(data) > 0 {
		out.Set("Content-Type", "application/json")
	}
	return out
}

func (s *Server) violate(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.violations = append(s.violations, v)
}

func (s *Server) serve(r *http.Request, body []byte, rec *Request) (answer, *openapi3filter.RequestValidationInput) {
	// As the real server (v2.9) does, a wrong password is echoed in the answer's message.
	if u, p, ok := r.BasicAuth(); !ok || u != s.opts.User {
		return errAnswer(http.StatusUnauthorized, "invalid username"), nil
	} else if p != s.password() {
		return errAnswer(http.StatusUnauthorized, "invalid password: %s", p), nil
	}
	route, params, err := s.spec.Router.FindRoute(r)
	if err != nil {
		s.violate(fmt.Sprintf("%s %s: %v", r.Method, r.URL, err))
		return errAnswer(http.StatusNotFound, "%v", err), nil
	}
	rec.OperationID = route.Operation.OperationID
	input := &openapi3filter.RequestValidationInput{
		Request: r, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true},
	}
	if err := openapi3filter.ValidateRequest(r.Context(), input); err != nil {
		s.violate(fmt.Sprintf("%s %s %s: %v", r.Method, r.URL, body, err))
		return errAnswer(http.StatusBadRequest, "%v", err), input
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	s.mu.Lock()
	hook := s.onRequest
	s.mu.Unlock()
	if hook != nil {
		hook(rec.OperationID)
	}
	hit := s.matchFault(r, rec.OperationID)
	if hit == nil {
		return s.dispatch(r.Context(), rec.OperationID, params, r.URL.Query(), body), input
	}
	if hit.Applied {
		s.dispatch(r.Context(), rec.OperationID, params, r.URL.Query(), body)
	}
	return faultAnswer(r, hit), input
}

func (s *Server) matchFault(r *http.Request, op string) *Fault {
	s.mu.Lock()
	var hit *Fault
	for _, f := range s.faults {
		if f.Count > 0 && (f.Method == "" || f.Method == r.Method) && (f.OperationID == "" || f.OperationID == op) {
			f.Count--
			hit = f
			break
		}
	}
	s.mu.Unlock()
	return hit
}

func faultAnswer(r *http.Request, hit *Fault) answer {
	if hit.Status == 0 {
		select {
		case <-r.Context().Done():
		case <-time.After(30 * time.Second):
		}
		return errAnswer(http.StatusGatewayTimeout, "timed out")
	}
	msg := hit.Message
	if msg == "" {
		msg = http.StatusText(hit.Status)
	}
	return errAnswer(hit.Status, "%s", msg)
}

func (s *Server) dispatch(ctx context.Context, op string, params map[string]string, q url.Values, body []byte) answer {
	switch op {
	case "showRuntimeMap", "addMapEntry", "getRuntimeMapEntry", "replaceRuntimeMapEntry", "deleteRuntimeMapEntry", "addPayloadRuntimeMap", "clearRuntimeMap":
		return s.mapEntries(ctx, op, params, q, body)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch op {
	case "getConfigurationVersion":
		if id := q.Get("transaction_id"); id != "" {
			t, ok := s.txs[id]
			if !ok {
				return errAnswer(http.StatusNotFound, "transaction %s not found", id)
			}
			return answer{status: http.StatusOK, body: t.version}
		}
		return answer{status: http.StatusOK, body: s.version}
	case "startTransaction":
		v, _ := strconv.ParseInt(q.Get("version"), 10, 64)
		if v != s.version {
			return errAnswer(http.StatusConflict, "version mismatch, given: %d, found: %d", v, s.version)
		}
		t := &tx{id: newID(), version: v, status: "in_progress", cfg: s.live.clone()}
		s.txs[t.id] = t
		return answer{status: http.StatusCreated, body: txBody(t)}
	case "getTransactions":
		out := []any{}
		for _, t := range s.txs {
			if st := q.Get("status"); st != "" && st != t.status {
				continue
			}
			out = append(out, txBody(t))
		}
		return answer{status: http.StatusOK, body: out}
	case "getTransaction":
		t, ok := s.txs[params["id"]]
		if !ok {
			return errAnswer(http.StatusNotFound, "transaction %s not found", params["id"])
		}
		return answer{status: http.StatusOK, body: txBody(t)}
	case "deleteTransaction":
		if _, ok := s.txs[params["id"]]; !ok {
			return errAnswer(http.StatusNotFound, "transaction %s not found", params["id"])
		}
		delete(s.txs, params["id"])
		return answer{status: http.StatusNoContent}
	case "commitTransaction":
		t, ok := s.txs[params["id"]]
		if !ok {
			return errAnswer(http.StatusNotFound, "transaction %s not found", params["id"])
		}
		if t.version != s.version {
			t.status = "outdated"
			return errAnswer(http.StatusNotAcceptable, "transaction %s is outdated: version %d, configuration is at %d", t.id, t.version, s.version)
		}
		if _, err := t.cfg.Render(); err != nil {
			t.status = "failed"
			return errAnswer(http.StatusBadRequest, "%v", err)
		}
		s.live = t.cfg
		s.version++
		delete(s.txs, t.id)
		t.status = "success"
		t.version = s.version
		return answer{status: http.StatusAccepted, header: http.Header{"Reload-Id": {s.newReload()}}, body: txBody(t)}
	case "getReload":
		rl, ok := s.reloads[params["id"]]
		if !ok {
			return errAnswer(http.StatusNotFound, "reload %s not found", params["id"])
		}
		if rl.status == "in_progress" {
			if rl.polls > 0 {
				rl.polls--
			} else {
				rl.status = "succeeded"
				if s.opts.OnReload != nil {
					if err := s.opts.OnReload(rl.config); err != nil {
						rl.status, rl.response = "failed", err.Error()
					}
				}
			}
		}
		b := map[string]any{"id": params["id"], "status": rl.status}
		if rl.response != "" {
			b["response"] = rl.response
		}
		return answer{status: http.StatusOK, body: b}
	}
	if k, verb, ok := objectOp(op); ok {
		a := s.object(k, verb, params, q, body)
		// The answer is encoded after the lock is released: detach it from the live objects.
		if a.body != nil {
			b, _ := json.Marshal(a.body)
			a.body = json.RawMessage(b)
		}
		return a
	}
	return errAnswer(http.StatusNotImplemented, "operation %s is not implemented by the fake", op)
}

func txBody(t *tx) map[string]any {
	return map[string]any{"_version": t.version, "id": t.id, "status": t.status}
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// newReload records a reload of the live configuration; s.mu is held.
func (s *Server) newReload() string {
	s.reloadSeq++
	id := fmt.Sprintf("%s-%d", time.Now().UTC().Format("2006-01-02"), s.reloadSeq)
	text, _ := s.live.Render()
	s.reloads[id] = &reloadState{polls: s.opts.ReloadPolls, status: "in_progress", config: text}
	return id
}

// objectOp splits an operation id such as replaceHTTPRequestRule into kind and verb.
func objectOp(op string) (kind string, verb string, ok bool) {
	for _, v := range []string{"get", "create", "replace", "delete"} {
		rest, found := strings.CutPrefix(op, v)
		if !found {
			continue
		}
		if _, known := kinds[rest]; known {
			return rest, v, true
		}
		if k, plural := strings.CutSuffix(rest, "s"); plural && v == "get" {
			if _, known := kinds[k]; known {
				return k, "list", true
			}
		}
	}
	return "", "", false
}

// object handles the configuration object operations; s.mu is held.
func (s *Server) object(k, verb string, params map[string]string, q url.Values, body []byte) answer {
	cfg := s.live
	version := s.version
	txID, ver := q.Get("transaction_id"), q.Get("version")
	if txID != "" && ver != "" {
		return errAnswer(http.StatusBadRequest, "both version and transaction specified, specify only one")
	}
	if txID != "" {
		t, ok := s.txs[txID]
		if !ok {
			return errAnswer(http.StatusNotFound, "transaction %s not found", txID)
		}
		if t.status != "in_progress" {
			return errAnswer(http.StatusBadRequest, "transaction %s is %s", txID, t.status)
		}
		cfg, version = t.cfg, t.version
	}
	write := verb == "create" || verb == "replace" || verb == "delete"
	if write && txID == "" {
		if ver == "" {
			return errAnswer(http.StatusBadRequest, "version or transaction not specified")
		}
		if v, _ := strconv.ParseInt(ver, 10, 64); v != s.version {
			return errAnswer(http.StatusConflict, "version mismatch, given: %s, found: %d", ver, s.version)
		}
	}
	kd := kinds[k]
	l, err := kd.list(cfg, q)
	if err != nil {
		var nf notFound
		if errors.As(err, &nf) {
			return errAnswer(http.StatusNotFound, "%v", err)
		}
		return errAnswer(http.StatusBadRequest, "%v", err)
	}
	items := l.get()
	idx := -1
	if id, ok := params["name"]; ok {
		idx = find(items, id)
	} else if id, ok := params["index"]; ok {
		if n, err := strconv.Atoi(id); err == nil && n >= 0 && n < len(items) {
			idx = n
		}
	}
	var in obj
	if verb == "create" || verb == "replace" {
		if err := json.Unmarshal(body, &in); err != nil {
			return errAnswer(http.StatusBadRequest, "body: %v", err)
		}
		if v := s.spec.checkDependencies(k, in); len(v) > 0 {
			s.violations = append(s.violations, v...)
			return errAnswer(http.StatusBadRequest, "%s", strings.Join(v, "; "))
		}
		for _, f := range omittedWhenZero[k] {
			if n, ok := in[f].(float64); ok && n == 0 {
				delete(in, f)
			}
		}
	}
	if kd.key == "" {
		defer renumber(l)
	}
	switch verb {
	case "list":
		if items == nil {
			items = []obj{}
		}
		return answer{status: http.StatusOK, header: versionHeader(version), body: map[string]any{"_version": version, "data": items}}
	case "get":
		if idx < 0 {
			return errAnswer(http.StatusNotFound, "%s not found", strings.ToLower(k))
		}
		return answer{status: http.StatusOK, header: versionHeader(version), body: map[string]any{"_version": version, "data": items[idx]}}
	case "create":
		if kd.key == "name" {
			if find(items, str(in["name"])) >= 0 {
				return errAnswer(http.StatusConflict, "%s %s already exists", strings.ToLower(k), str(in["name"]))
			}
			items = append(items, in)
		} else {
			at, _ := in["index"].(float64)
			if int(at) > len(items) {
				return errAnswer(http.StatusBadRequest, "index %d out of range", int(at))
			}
			items = append(items[:int(at)], append([]obj{in}, items[int(at):]...)...)
		}
		l.set(items)
	case "replace":
		if idx < 0 {
			return errAnswer(http.StatusNotFound, "%s not found", strings.ToLower(k))
		}
		if kd.key == "name" && str(in["name"]) != params["name"] {
			return errAnswer(http.StatusBadRequest, "name in body %q differs from %q", str(in["name"]), params["name"])
		}
		items[idx] = in
		l.set(items)
	case "delete":
		if idx < 0 {
			return errAnswer(http.StatusNotFound, "%s not found", strings.ToLower(k))
		}
		if kd.key == "name" {
			cfg.dropChildren(k, str(items[idx]["name"]))
		}
		items = append(items[:idx], items[idx+1:]...)
		l.set(items)
		if txID != "" {
			return answer{status: http.StatusAccepted}
		}
		s.version++
		return answer{status: http.StatusAccepted, header: http.Header{"Reload-Id": {s.newReload()}}}
	}
	if txID != "" {
		return answer{status: http.StatusAccepted, body: in}
	}
	s.version++
	return answer{status: http.StatusAccepted, header: http.Header{"Reload-Id": {s.newReload()}}, body: in}
}

// omittedWhenZero are the fields the real server keeps as plain integers with omitempty
// (client-native's models), so that a 0 sent is absent when read back.
var omittedWhenZero = map[string][]string{
	"HTTPRequestRule":  {"sc_id", "sc_idx"},
	"HTTPResponseRule": {"sc_id", "sc_idx"},
}

// renumber keeps each rule's index equal to its position after inserts and deletes.
func renumber(l list) {
	for i, o := range l.get() {
		o["index"] = i
	}
}

func versionHeader(v int64) http.Header {
	return http.Header{"Configuration-Version": {strconv.FormatInt(v, 10)}}
}

// payloadReplaceBytes is the size above which the real server (v2.9, client-native v5) sends a
// map payload as `prepare map`, `add map @ver`, `commit map`: the map then holds that payload's
// entries only. A smaller payload is one `add map` with a payload, added to what is there.
const payloadReplaceBytes = 8192

// unreachable is a store error that says HAProxy's runtime socket cannot be reached.
func unreachable(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}

// mapEntries handles the runtime map entry operations. The existence check before an add is the
// API's own (409), since HAProxy's `add map` would add a second entry. When HAProxy cannot be
// reached the answers are the real server's (v2.9.25): 404 to a delete (its error names the
// command and ends in "not found"), 400 to an add; the fake answers a replace as a delete and a
// read with 500.
func (s *Server) mapEntries(ctx context.Context, op string, params map[string]string, q url.Values, body []byte) answer {
	m, key := q.Get("map"), params["id"]
	if op == "addPayloadRuntimeMap" || op == "clearRuntimeMap" {
		m = params["name"]
	}
	store := s.opts.Maps
	fail := func(err error) answer {
		switch {
		case unreachable(err) && (op == "deleteRuntimeMapEntry" || op == "replaceRuntimeMapEntry"):
			verb := map[string]string{"deleteRuntimeMapEntry": "del", "replaceRuntimeMapEntry": "set"}[op]
			return errAnswer(http.StatusNotFound, "%v [%s map %s %s] not found", err, verb, m, key)
		case unreachable(err) && (op == "addMapEntry" || op == "addPayloadRuntimeMap"):
			return errAnswer(http.StatusBadRequest, "%v", err)
		case errors.Is(err, ErrNotFound):
			return errAnswer(http.StatusNotFound, "%v", err)
		}
		return errAnswer(http.StatusInternalServerError, "%v", err)
	}
	sync := func(a answer) answer {
		if q.Get("force_sync") == "true" {
			if err := store.Sync(ctx, m); err != nil {
				return fail(err)
			}
		}
		return a
	}
	entries, err := store.Show(ctx, m)
	if err != nil {
		return fail(err)
	}
	lookup := func(k string) (MapEntry, bool) {
		for _, e := range entries {
			if e.Key == k {
				return e, true
			}
		}
		return MapEntry{}, false
	}
	switch op {
	case "showRuntimeMap":
		out := []map[string]string{}
		for _, e := range entries {
			out = append(out, map[string]string{"key": e.Key, "value": e.Value})
		}
		return answer{status: http.StatusOK, body: out}
	case "getRuntimeMapEntry":
		e, ok := lookup(key)
		if !ok {
			return errAnswer(http.StatusNotFound, "key %s not found in map %s", key, m)
		}
		return answer{status: http.StatusOK, body: map[string]string{"key": e.Key, "value": e.Value}}
	case "addMapEntry":
		var in struct{ Key, Value string }
		if err := json.Unmarshal(body, &in); err != nil || in.Key == "" {
			return errAnswer(http.StatusBadRequest, "map entry needs a key and a value")
		}
		if _, ok := lookup(in.Key); ok {
			return errAnswer(http.StatusConflict, "key %s already exists in map %s", in.Key, m)
		}
		if err := store.Add(ctx, m, in.Key, in.Value); err != nil {
			return fail(err)
		}
		return sync(answer{status: http.StatusCreated, body: map[string]string{"key": in.Key, "value": in.Value}})
	case "addPayloadRuntimeMap":
		var in []MapEntry
		if err := json.Unmarshal(body, &in); err != nil {
			return errAnswer(http.StatusBadRequest, "body: %v", err)
		}
		out := []map[string]string{}
		size := 0
		for _, e := range in {
			if e.Key == "" {
				return errAnswer(http.StatusBadRequest, "map entry needs a key")
			}
			size += len(e.Key) + len(e.Value) + 2
			out = append(out, map[string]string{"key": e.Key, "value": e.Value})
		}
		if size > payloadReplaceBytes {
			if err := store.Replace(ctx, m, in); err != nil {
				return fail(err)
			}
			return sync(answer{status: http.StatusCreated, body: out})
		}
		for _, e := range in {
			if err := store.Add(ctx, m, e.Key, e.Value); err != nil {
				return fail(err)
			}
		}
		return sync(answer{status: http.StatusCreated, body: out})
	case "clearRuntimeMap":
		if err := store.Replace(ctx, m, nil); err != nil {
			return fail(err)
		}
		return sync(answer{status: http.StatusNoContent})
	case "replaceRuntimeMapEntry":
		var in struct{ Value string }
		if err := json.Unmarshal(body, &in); err != nil {
			return errAnswer(http.StatusBadRequest, "body: %v", err)
		}
		if _, ok := lookup(key); !ok {
			return errAnswer(http.StatusNotFound, "key %s not found in map %s", key, m)
		}
		if err := store.Set(ctx, m, key, in.Value); err != nil {
			return fail(err)
		}
		return sync(answer{status: http.StatusOK, body: map[string]string{"key": key, "value": in.Value}})
	default: // deleteRuntimeMapEntry
		if _, ok := lookup(key); !ok {
			return errAnswer(http.StatusNotFound, "key %s not found in map %s", key, m)
		}
		if err := store.Del(ctx, m, key); err != nil {
			return fail(err)
		}
		return sync(answer{status: http.StatusNoContent})
	}
}
