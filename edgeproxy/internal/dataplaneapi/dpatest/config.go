package dpatest

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
)

// obj is one configuration object as the API carries it.
type obj = map[string]any

// Config is the part of an HAProxy configuration the fake keeps: frontends and backends with
// their binds, servers and HTTP rules, in the order they were created.
type Config struct {
	Frontends []obj            `json:"frontends"`
	Backends  []obj            `json:"backends"`
	Binds     map[string][]obj `json:"binds"`   // by frontend
	Servers   map[string][]obj `json:"servers"` // by backend
	ReqRules  map[string][]obj `json:"req_rules"`
	ResRules  map[string][]obj `json:"res_rules"` // by "frontend/<name>" or "backend/<name>"
}

func newConfig() *Config {
	return &Config{Binds: map[string][]obj{}, Servers: map[string][]obj{}, ReqRules: map[string][]obj{}, ResRules: map[string][]obj{}}
}

func (c *Config) clone() *Config {
	b, err := json.Marshal(c)
	if err != nil {
		panic(fmt.Sprintf("dpatest: clone config: %v", err))
	}
	out := newConfig()
	if err := json.Unmarshal(b, out); err != nil {
		panic(fmt.Sprintf("dpatest: clone config: %v", err))
	}
	return out
}

// list is where one family of objects lives in a Config.
type list struct {
	get func() []obj
	set func([]obj)
}

// kind is one family of configuration objects: where its list lives and how one is named.
type kind struct {
	list func(c *Config, q url.Values) (list, error)
	key  string // "name", or "" for rules addressed by index
}

type notFound struct{ msg string }

func (e notFound) Error() string { return e.msg }

func find(l []obj, name string) int {
	for i, o := range l {
		if o["name"] == name {
			return i
		}
	}
	return -1
}

var kinds = map[string]kind{
	"Frontend": {key: "name", list: func(c *Config, _ url.Values) (list, error) {
		return list{func() []obj { return c.Frontends }, func(l []obj) { c.Frontends = l }}, nil
	}},
	"Backend": {key: "name", list: func(c *Config, _ url.Values) (list, error) {
		return list{func() []obj { return c.Backends }, func(l []obj) { c.Backends = l }}, nil
	}},
	"Bind": {key: "name", list: func(c *Config, q url.Values) (list, error) {
		name := q.Get("frontend")
		if name == "" && q.Get("parent_type") == "frontend" {
			name = q.Get("parent_name")
		}
		return child(c.Binds, c.Frontends, "frontend", name)
	}},
	"Server": {key: "name", list: func(c *Config, q url.Values) (list, error) {
		name := q.Get("backend")
		if name == "" && q.Get("parent_type") == "backend" {
			name = q.Get("parent_name")
		}
		return child(c.Servers, c.Backends, "backend", name)
	}},
	"HTTPRequestRule":  {list: func(c *Config, q url.Values) (list, error) { return ruleList(c, c.ReqRules, q) }},
	"HTTPResponseRule": {list: func(c *Config, q url.Values) (list, error) { return ruleList(c, c.ResRules, q) }},
}

func child(m map[string][]obj, parents []obj, what, name string) (list, error) {
	if name == "" {
		return list{}, fmt.Errorf("%s name missing", what)
	}
	if find(parents, name) < 0 {
		return list{}, notFound{fmt.Sprintf("%s %s does not exist", what, name)}
	}
	return keyed(m, name), nil
}

func keyed(m map[string][]obj, k string) list {
	return list{func() []obj { return m[k] }, func(l []obj) {
		if len(l) == 0 {
			delete(m, k)
			return
		}
		m[k] = l
	}}
}

func ruleList(c *Config, m map[string][]obj, q url.Values) (list, error) {
	pt, pn := q.Get("parent_type"), q.Get("parent_name")
	parents := c.Frontends
	if pt == "backend" {
		parents = c.Backends
	}
	if find(parents, pn) < 0 {
		return list{}, notFound{fmt.Sprintf("%s %s does not exist", pt, pn)}
	}
	return keyed(m, pt+"/"+pn), nil
}

// dropChildren removes what belongs to a deleted frontend or backend.
func (c *Config) dropChildren(k string, name string) {
	switch k {
	case "Frontend":
		delete(c.Binds, name)
		delete(c.ReqRules, "frontend/"+name)
		delete(c.ResRules, "frontend/"+name)
	case "Backend":
		delete(c.Servers, name)
		delete(c.ReqRules, "backend/"+name)
		delete(c.ResRules, "backend/"+name)
	}
}

// Render writes the frontends and backends as HAProxy configuration, the way the Data Plane API
// writes the fields livegate uses. A field it does not know is an error, so nothing is dropped
// silently.
func (c *Config) Render() (string, error) {
	var b strings.Builder
	for _, fe := range c.Frontends {
		name := str(fe["name"])
		fmt.Fprintf(&b, "frontend %s\n", name)
		if err := section(&b, fe, frontendFields); err != nil {
			return "", fmt.Errorf("frontend %s: %w", name, err)
		}
		if err := writeLines(&b, c.Binds[name], bindLine); err != nil {
			return "", fmt.Errorf("frontend %s bind: %w", name, err)
		}
		if err := c.sectionRules(&b, "frontend/"+name); err != nil {
			return "", fmt.Errorf("frontend %s: %w", name, err)
		}
		if v, ok := fe["default_backend"]; ok {
			fmt.Fprintf(&b, "    default_backend %s\n", str(v))
		}
		b.WriteString("\n")
	}
	for _, be := range c.Backends {
		name := str(be["name"])
		fmt.Fprintf(&b, "backend %s\n", name)
		if err := section(&b, be, backendFields); err != nil {
			return "", fmt.Errorf("backend %s: %w", name, err)
		}
		if err := c.sectionRules(&b, "backend/"+name); err != nil {
			return "", fmt.Errorf("backend %s: %w", name, err)
		}
		if err := writeLines(&b, c.Servers[name], serverLine); err != nil {
			return "", fmt.Errorf("backend %s server: %w", name, err)
		}
		b.WriteString("\n")
	}
	return b.String(), nil
}

type field func(v any) (string, error)

func plain(directive string) field {
	return func(v any) (string, error) { return directive + " " + str(v), nil }
}

func flag(directive string) field {
	return func(v any) (string, error) {
		if v == true {
			return directive, nil
		}
		return "", nil
	}
}

func stickTable(v any) (string, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return "", fmt.Errorf("stick_table is %T", v)
	}
	var parts []string
	for _, k := range []string{"type", "size", "expire", "store"} {
		if x, ok := m[k]; ok {
			parts = append(parts, k, str(x))
		}
	}
	for k := range m {
		if k != "type" && k != "size" && k != "expire" && k != "store" {
			return "", fmt.Errorf("stick_table.%s not rendered by the fake", k)
		}
	}
	return "stick-table " + strings.Join(parts, " "), nil
}

var (
	frontendFields = map[string]field{
		"name": nil, "default_backend": nil,
		"mode":                 plain("mode"),
		"httplog":              flag("option httplog"),
		"client_timeout":       plain("timeout client"),
		"http_request_timeout": plain("timeout http-request"),
		"stick_table":          stickTable,
	}
	backendFields = map[string]field{
		"name":            nil,
		"mode":            plain("mode"),
		"connect_timeout": plain("timeout connect"),
		"server_timeout":  plain("timeout server"),
		"tunnel_timeout":  plain("timeout tunnel"),
	}
)

func section(b *strings.Builder, o obj, fields map[string]field) error {
	keys := slices.Sorted(maps.Keys(o))
	for _, k := range keys {
		f, ok := fields[k]
		if !ok {
			return fmt.Errorf("field %s not rendered by the fake", k)
		}
		if f == nil {
			continue
		}
		line, err := f(o[k])
		if err != nil {
			return err
		}
		if line != "" {
			b.WriteString("    " + line + "\n")
		}
	}
	return nil
}

// writeLines writes a section's line for each of list (its binds or servers), as line renders it.
func writeLines(b *strings.Builder, list []obj, line func(obj) (string, error)) error {
	for _, o := range list {
		l, err := line(o)
		if err != nil {
			return err
		}
		b.WriteString("    " + l + "\n")
	}
	return nil
}

func bindLine(o obj) (string, error) {
	addr := str(o["address"])
	if p, ok := o["port"]; ok {
		addr += ":" + str(p)
	}
	parts := []string{"bind", addr}
	known := map[string]bool{"name": true, "address": true, "port": true}
	if o["ssl"] == true {
		parts = append(parts, "ssl")
	}
	known["ssl"] = true
	for _, kv := range [][2]string{{"ssl_certificate", "crt"}, {"alpn", "alpn"}, {"ssl_min_ver", "ssl-min-ver"}, {"ciphers", "ciphers"}, {"ciphersuites", "ciphersuites"}} {
		known[kv[0]] = true
		if v, ok := o[kv[0]]; ok {
			parts = append(parts, kv[1], str(v))
		}
	}
	for k := range o {
		if !known[k] {
			return "", fmt.Errorf("field %s not rendered by the fake", k)
		}
	}
	return strings.Join(parts, " "), nil
}

func serverLine(o obj) (string, error) {
	addr := str(o["address"])
	if p, ok := o["port"]; ok {
		addr += ":" + str(p)
	}
	for k := range o {
		if k != "name" && k != "address" && k != "port" {
			return "", fmt.Errorf("field %s not rendered by the fake", k)
		}
	}
	return fmt.Sprintf("server %s %s", str(o["name"]), addr), nil
}

// sectionRules writes the http-request and then the http-response rules of the section at key
// (frontend/NAME or backend/NAME).
func (c *Config) sectionRules(b *strings.Builder, key string) error {
	if err := rules(b, "http-request", c.ReqRules[key]); err != nil {
		return err
	}
	return rules(b, "http-response", c.ResRules[key])
}

// ruleFields renders the action part of one rule type, as fields in order.
var ruleFields = map[string][]string{
	"set-var":      {"var_expr"},
	"set-dst":      {"expr"},
	"set-dst-port": {"expr"},
	"set-header":   {"hdr_name", "hdr_format"},
	"del-header":   {"hdr_name"},
	"deny":         {"deny_status"},
	"track-sc":     {"track_sc_key"},
	"sc-inc-gpc0":  {},
	"return":       {"return_status_code", "return_content_type", "return_content_format", "return_content"},
}

func rules(b *strings.Builder, directive string, list []obj) error {
	for i, r := range list {
		line, err := ruleLine(r)
		if err != nil {
			return fmt.Errorf("%s rule %d: %w", directive, i, err)
		}
		b.WriteString("    " + directive + " " + line + "\n")
	}
	return nil
}

func ruleLine(r obj) (string, error) {
	typ := str(r["type"])
	fields, ok := ruleFields[typ]
	if !ok {
		return "", fmt.Errorf("type %s not rendered by the fake", typ)
	}
	used := map[string]bool{"type": true, "index": true, "cond": true, "cond_test": true}
	action := typ
	switch typ {
	case "set-var":
		action = fmt.Sprintf("set-var(%s.%s)", str(r["var_scope"]), str(r["var_name"]))
		used["var_scope"], used["var_name"] = true, true
	case "track-sc":
		action = "track-sc" + str(r["track_sc_stick_counter"])
		used["track_sc_stick_counter"] = true
	case "sc-inc-gpc0":
		id := "0"
		if v, ok := r["sc_id"]; ok {
			id = str(v)
		}
		action = "sc-inc-gpc0(" + id + ")"
		used["sc_id"] = true
	}
	parts := []string{action}
	for _, f := range fields {
		used[f] = true
		v, ok := r[f]
		if !ok {
			continue
		}
		switch f {
		case "deny_status":
			parts = append(parts, "deny_status", str(v))
		case "return_status_code":
			parts = append(parts, "status", str(v))
		case "return_content_type":
			parts = append(parts, "content-type", str(v))
		case "return_content_format":
			parts = append(parts, str(v))
		default:
			parts = append(parts, str(v))
		}
	}
	for k := range r {
		if !used[k] {
			return "", fmt.Errorf("%s field %s not rendered by the fake", typ, k)
		}
	}
	if c, ok := r["cond"]; ok {
		parts = append(parts, str(c), str(r["cond_test"]))
	}
	return strings.Join(parts, " "), nil
}

func str(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return fmt.Sprintf("%d", int64(x))
	case json.Number:
		return x.String()
	default:
		return fmt.Sprint(x)
	}
}
