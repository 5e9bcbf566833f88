package dataplaneapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
)

const (
	cfgPath = "/services/haproxy/configuration"
	txPath  = "/services/haproxy/transactions"
)

// Setup makes sure the HAProxy configuration holds the driver's Proxy. It reads what is there and,
// only when that differs, changes it in one transaction, commits it and waits until the reload
// reports succeeded. Once it has succeeded it does nothing more; Apply and List call it first.
func (d *Driver) Setup(ctx context.Context) error { return d.ensureSetup(ctx) }

// conflict reports a configuration that moved under us: 409 when a transaction is started on a
// stale version or an object to create exists, 406 when an outdated transaction is committed, 404
// when an object to replace or the transaction itself is gone. Reading again and starting over
// is the answer to each.
func conflict(err error) bool {
	s := statusOf(err)
	return s == http.StatusConflict || s == http.StatusNotAcceptable || s == http.StatusNotFound
}

func (d *Driver) setup(ctx context.Context) error {
	wait := d.c.backoff
	var err error
	for attempt := 1; attempt <= d.txAttempts; attempt++ {
		if err = d.setupOnce(ctx); err == nil {
			return nil
		}
		var committed *committedError
		if errors.As(err, &committed) || !(conflict(err) || transient(err)) || ctx.Err() != nil || attempt == d.txAttempts {
			break
		}
		d.log.Warn().Err(err).Int("attempt", attempt).Msg("data plane api set-up transaction failed, starting over")
		if serr := d.c.sleep(ctx, wait); serr != nil {
			break
		}
		wait *= 2
	}
	return fmt.Errorf("set up haproxy frontend and backend: %w", err)
}

// op is one configuration change; the transaction id is added when it is sent.
type op struct {
	method string
	path   string
	query  url.Values
	body   any
}

func (d *Driver) setupOnce(ctx context.Context) error {
	var version int64
	if _, err := d.c.do(ctx, request{method: http.MethodGet, path: cfgPath + "/version", out: &version, retry: true}); err != nil {
		return fmt.Errorf("read configuration version: %w", err)
	}
	ops, err := d.plan(ctx)
	if err != nil {
		return err
	}
	if len(ops) == 0 {
		d.log.Info().Int64("config_version", version).Msg("haproxy frontend and backend already set up")
		return nil
	}
	before, err := d.openTransactions(ctx)
	if err != nil {
		return err
	}
	var tx transaction
	if _, err := d.c.do(ctx, request{method: http.MethodPost, path: txPath, query: url.Values{"version": {strconv.FormatInt(version, 10)}}, out: &tx}); err != nil {
		err = fmt.Errorf("start transaction on version %d: %w", version, err)
		if s := statusOf(err); s != 0 && s < 500 {
			return err
		}
		return errors.Join(err, d.dropStarted(ctx, version, before))
	}
	if tx.ID == "" {
		return errors.New("start transaction: the answer has no transaction id")
	}
	for _, o := range ops {
		q := url.Values{}
		for k, v := range o.query {
			q[k] = v
		}
		q.Set("transaction_id", tx.ID)
		if _, err := d.c.do(ctx, request{method: o.method, path: o.path, query: q, body: o.body}); err != nil {
			return errors.Join(fmt.Errorf("transaction %s: %w", tx.ID, err), d.rollback(ctx, tx.ID))
		}
	}
	res, err := d.c.do(ctx, request{method: http.MethodPut, path: txPath + "/" + tx.ID})
	if err != nil {
		// A failed or outdated transaction stays on the server until deleted; a commit that timed
		// out may or may not have happened, and the next attempt reads what is there.
		return errors.Join(fmt.Errorf("commit transaction %s: %w", tx.ID, err), d.rollback(ctx, tx.ID))
	}
	d.log.Info().Str("transaction_id", tx.ID).Int("changes", len(ops)).Msg("haproxy frontend and backend set up through the data plane api")
	if res.status != http.StatusAccepted {
		return nil
	}
	if err := d.waitReload(ctx, res.header.Get("Reload-ID")); err != nil {
		return &committedError{err}
	}
	return nil
}

// openTransactions lists the transactions in progress, so that a start whose answer was lost can
// tell the one it created from those of other API users.
func (d *Driver) openTransactions(ctx context.Context) ([]transaction, error) {
	var txs []transaction
	if _, err := d.c.do(ctx, request{method: http.MethodGet, path: txPath, query: url.Values{"status": {"in_progress"}}, out: &txs, retry: true}); err != nil {
		return nil, fmt.Errorf("list transactions: %w", err)
	}
	return txs, nil
}

// dropStarted deletes the transactions on version that were not open before: a start that timed
// out or failed on the server's side may still have opened one, and nothing else would close it.
func (d *Driver) dropStarted(ctx context.Context, version int64, before []transaction) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.c.timeout)
	defer cancel()
	after, err := d.openTransactions(ctx)
	if err != nil {
		return err
	}
	known := make(map[string]bool, len(before))
	for _, t := range before {
		known[t.ID] = true
	}
	var errs []error
	for _, t := range after {
		if t.Version == version && !known[t.ID] {
			errs = append(errs, d.rollback(ctx, t.ID))
		}
	}
	return errors.Join(errs...)
}

// committedError is a failure after the commit: starting over would find nothing to change and
// hide that the reload did not succeed.
type committedError struct{ err error }

func (e *committedError) Error() string { return e.err.Error() }
func (e *committedError) Unwrap() error { return e.err }

// rollback deletes a transaction even when ctx is already cancelled, so no half-applied
// transaction stays open. A transaction that is already gone is fine.
func (d *Driver) rollback(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.c.timeout)
	defer cancel()
	_, err := d.c.do(ctx, request{method: http.MethodDelete, path: txPath + "/" + id, retry: true})
	if err == nil || statusOf(err) == http.StatusNotFound {
		return nil
	}
	return fmt.Errorf("roll back transaction %s: %w", id, err)
}

func (d *Driver) waitReload(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("commit accepted without a Reload-ID")
	}
	rctx, cancel := context.WithTimeout(ctx, d.reloadTimeout)
	defer cancel()
	status := "in_progress"
	for {
		var r reload
		_, err := d.c.do(rctx, request{method: http.MethodGet, path: "/services/haproxy/reloads/" + id, out: &r, retry: true})
		if err == nil {
			status = r.Status
			switch r.Status {
			case "succeeded":
				d.log.Info().Str("reload_id", id).Msg("haproxy reloaded")
				return nil
			case "failed":
				return fmt.Errorf("reload %s failed: %s", id, r.Response)
			}
			err = d.c.sleep(rctx, d.reloadPoll)
		}
		if err != nil {
			if rctx.Err() != nil && ctx.Err() == nil {
				return fmt.Errorf("reload %s still %s after %v: %w", id, status, d.reloadTimeout, rctx.Err())
			}
			return fmt.Errorf("reload %s: %w", id, err)
		}
	}
}

// get reads one configuration object into out; found is false on 404.
func (d *Driver) get(ctx context.Context, path string, q url.Values, out any) (found bool, err error) {
	wrap := struct {
		Data any `json:"data"`
	}{Data: out}
	_, err = d.c.do(ctx, request{method: http.MethodGet, path: cfgPath + path, query: q, out: &wrap, retry: true})
	if statusOf(err) == http.StatusNotFound {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	return true, nil
}

// plan compares what the configuration holds with d.proxy and returns the changes, backend first
// so the frontend's default_backend names an existing backend at every step.
func (d *Driver) plan(ctx context.Context) ([]op, error) {
	p := d.proxy
	found, ops, err := section(ctx, d, "backends", p.Backend.Name, p.Backend)
	if err != nil {
		return nil, err
	}
	var (
		servers             []Server
		beRules, beResRules []Rule
	)
	beQ := url.Values{"backend": {p.Backend.Name}}
	beParent := url.Values{"parent_type": {"backend"}, "parent_name": {p.Backend.Name}}
	if found {
		if _, err := d.get(ctx, "/servers", beQ, &servers); err != nil {
			return nil, err
		}
		if _, err := d.get(ctx, "/http_request_rules", beParent, &beRules); err != nil {
			return nil, err
		}
		if _, err := d.get(ctx, "/http_response_rules", beParent, &beResRules); err != nil {
			return nil, err
		}
	}
	ops = append(ops, named(cfgPath+"/servers", beQ, servers, p.Servers, func(s Server) string { return s.Name })...)
	ops = append(ops, indexed(cfgPath+"/http_request_rules", beParent, beRules, p.BackendRules)...)
	ops = append(ops, indexed(cfgPath+"/http_response_rules", beParent, beResRules, p.ResponseRules)...)

	found, feOps, err := section(ctx, d, "frontends", p.Frontend.Name, p.Frontend)
	if err != nil {
		return nil, err
	}
	ops = append(ops, feOps...)
	var (
		binds   []Bind
		feRules []Rule
	)
	feQ := url.Values{"frontend": {p.Frontend.Name}}
	feParent := url.Values{"parent_type": {"frontend"}, "parent_name": {p.Frontend.Name}}
	if found {
		if _, err := d.get(ctx, "/binds", feQ, &binds); err != nil {
			return nil, err
		}
		if _, err := d.get(ctx, "/http_request_rules", feParent, &feRules); err != nil {
			return nil, err
		}
	}
	ops = append(ops, named(cfgPath+"/binds", feQ, binds, p.Binds, func(b Bind) string { return b.Name })...)
	ops = append(ops, indexed(cfgPath+"/http_request_rules", feParent, feRules, p.Rules)...)
	return ops, nil
}

// section reads the section of kind ("backends" or "frontends") named name and returns the op
// that makes it what livegate wants (want): a POST when it is missing, a PUT when it differs,
// none when it is the same. found says whether it was there, and so whether its binds, servers
// and rules are.
func section[T any](ctx context.Context, d *Driver, kind, name string, want T) (found bool, ops []op, err error) {
	var have T
	found, err = d.get(ctx, "/"+kind+"/"+name, nil, &have)
	switch {
	case err != nil:
		return false, nil, err
	case !found:
		return false, []op{{http.MethodPost, cfgPath + "/" + kind, nil, want}}, nil
	case !same(have, want):
		return true, []op{{http.MethodPut, cfgPath + "/" + kind + "/" + name, nil, want}}, nil
	}
	return true, nil, nil
}

// same compares an object read from the API with the one livegate wants after normalising the
// API's defaults: a field at its zero value (0, "", false) is the same as an absent one, since the
// real server omits some when they are zero (v2.9 drops sc_id 0 of sc-inc-gpc0(0)). A rule's index
// is compared as it is: 0 is a real position.
func same(have, want any) bool {
	return reflect.DeepEqual(canonical(have), canonical(want))
}

func canonical(v any) map[string]any {
	b, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	dropZero(m)
	return m
}

func dropZero(m map[string]any) {
	for k, v := range m {
		if k == "index" {
			continue
		}
		switch x := v.(type) {
		case nil:
			delete(m, k)
		case float64:
			if x == 0 {
				delete(m, k)
			}
		case string:
			if x == "" {
				delete(m, k)
			}
		case bool:
			if !x {
				delete(m, k)
			}
		case map[string]any:
			dropZero(x)
			if len(x) == 0 {
				delete(m, k)
			}
		}
	}
}

// named turns the objects of a list keyed by name (servers, binds) into have = want.
func named[T any](path string, q url.Values, have, want []T, name func(T) string) []op {
	var ops []op
	cur := map[string]T{}
	for _, h := range have {
		cur[name(h)] = h
	}
	keep := map[string]bool{}
	for _, w := range want {
		keep[name(w)] = true
		h, ok := cur[name(w)]
		switch {
		case !ok:
			ops = append(ops, op{http.MethodPost, path, q, w})
		case !same(h, w):
			ops = append(ops, op{http.MethodPut, path + "/" + name(w), q, w})
		}
	}
	for _, h := range have {
		if !keep[name(h)] {
			ops = append(ops, op{http.MethodDelete, path + "/" + name(h), q, nil})
		}
	}
	return ops
}

// indexed turns an ordered rule list into have = want: replace in place, append, then delete the
// surplus from the end so the indexes of the rules before it do not move.
func indexed(path string, q url.Values, have, want []Rule) []op {
	var ops []op
	for i, w := range want {
		switch {
		case i >= len(have):
			ops = append(ops, op{http.MethodPost, path, q, w})
		case !same(have[i], w):
			ops = append(ops, op{http.MethodPut, path + "/" + strconv.Itoa(i), q, w})
		}
	}
	for i := len(have) - 1; i >= len(want); i-- {
		ops = append(ops, op{http.MethodDelete, path + "/" + strconv.Itoa(i), q, nil})
	}
	return ops
}
