package dataplaneapi

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
)

// Proxy is the livegate frontend and backend as Data Plane API objects: what the set-up
// transaction makes the HAProxy configuration hold.
type Proxy struct {
	Backend       Backend
	Servers       []Server
	BackendRules  []Rule // http-request rules of the backend, in order
	ResponseRules []Rule // http-response rules of the backend, in order
	Frontend      Frontend
	Binds         []Bind
	Rules         []Rule // http-request rules of the frontend, in order
}

// LivegateProxy returns the frontend and backend haproxy.RenderSections writes for c, read back
// from that text, so the two drivers configure the same thing by construction. A directive this
// package cannot express as Data Plane API objects is an error, never dropped.
func LivegateProxy(c haproxy.Config) (Proxy, error) {
	text, err := haproxy.RenderSections(c)
	if err != nil {
		return Proxy{}, err
	}
	return parseSections(text)
}

func parseSections(text string) (Proxy, error) {
	var (
		p       Proxy
		section string
	)
	for n, line := range strings.Split(text, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		w := strings.Fields(t)
		if line[0] != ' ' && line[0] != '\t' {
			if len(w) != 2 || (w[0] != "frontend" && w[0] != "backend") {
				return Proxy{}, fmt.Errorf("livegate haproxy sections, line %d: unexpected %q", n+1, t)
			}
			section = w[0]
			if section == "frontend" {
				p.Frontend.Name = w[1]
			} else {
				p.Backend.Name = w[1]
			}
			continue
		}
		var err error
		switch section {
		case "frontend":
			err = p.frontendLine(t, w)
		case "backend":
			err = p.backendLine(t, w)
		default:
			err = fmt.Errorf("outside a section")
		}
		if err != nil {
			return Proxy{}, fmt.Errorf("livegate haproxy sections, line %d %q: %w", n+1, t, err)
		}
	}
	if p.Frontend.Name == "" || p.Backend.Name == "" {
		return Proxy{}, fmt.Errorf("livegate haproxy sections: no frontend or no backend")
	}
	return p, nil
}

func (p *Proxy) frontendLine(t string, w []string) error {
	f := &p.Frontend
	switch {
	case t == "mode http":
		f.Mode = "http"
	case t == "option httplog":
		f.HTTPLog = true
	case len(w) == 3 && w[0] == "timeout" && w[1] == "client":
		return setMillis(&f.ClientTimeout, w[2])
	case len(w) == 3 && w[0] == "timeout" && w[1] == "http-request":
		return setMillis(&f.HTTPRequestTimeout, w[2])
	case len(w) == 2 && w[0] == "default_backend":
		f.DefaultBackend = w[1]
	case w[0] == "stick-table":
		st, err := parseStickTable(w[1:])
		f.StickTable = st
		return err
	case w[0] == "bind":
		b, err := parseBind(w[1:])
		if err != nil {
			return err
		}
		b.Name = "livegate"
		if len(p.Binds) > 0 {
			b.Name += strconv.Itoa(len(p.Binds))
		}
		p.Binds = append(p.Binds, b)
	case w[0] == "http-request":
		return appendRule(&p.Rules, t)
	default:
		return fmt.Errorf("not expressible by the data plane api driver")
	}
	return nil
}

func (p *Proxy) backendLine(t string, w []string) error {
	b := &p.Backend
	switch {
	case t == "mode http":
		b.Mode = "http"
	case len(w) == 3 && w[0] == "timeout" && w[1] == "connect":
		return setMillis(&b.ConnectTimeout, w[2])
	case len(w) == 3 && w[0] == "timeout" && w[1] == "server":
		return setMillis(&b.ServerTimeout, w[2])
	case len(w) == 3 && w[0] == "timeout" && w[1] == "tunnel":
		return setMillis(&b.TunnelTimeout, w[2])
	case len(w) == 3 && w[0] == "server":
		addr, port, err := splitHostPort(w[2])
		if err != nil {
			return err
		}
		s := Server{Name: w[1], Address: addr}
		// The API's port is 1..65535: port 0 ("the connection's destination port") is written
		// as no port, which HAProxy reads the same way.
		if port != 0 {
			s.Port = ptr(port)
		}
		p.Servers = append(p.Servers, s)
	case w[0] == "http-request":
		return appendRule(&p.BackendRules, t)
	case w[0] == "http-response":
		return appendRule(&p.ResponseRules, t)
	default:
		return fmt.Errorf("not expressible by the data plane api driver")
	}
	return nil
}

func splitHostPort(s string) (string, int, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return s, 0, nil
	}
	port, err := strconv.Atoi(s[i+1:])
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("address %q: bad port", s)
	}
	return strings.Trim(s[:i], "[]"), port, nil
}

func parseBind(w []string) (Bind, error) {
	if len(w) == 0 {
		return Bind{}, fmt.Errorf("bind without address")
	}
	addr, port, err := splitHostPort(w[0])
	if err != nil {
		return Bind{}, err
	}
	if port == 0 {
		return Bind{}, fmt.Errorf("bind without port")
	}
	b := Bind{Address: addr, Port: ptr(port)}
	for i := 1; i < len(w); i++ {
		if w[i] == "ssl" {
			b.SSL = true
			continue
		}
		if i+1 >= len(w) {
			return Bind{}, fmt.Errorf("bind option %s without value", w[i])
		}
		v := w[i+1]
		switch w[i] {
		case "crt":
			b.SSLCertificate = v
		case "alpn":
			b.Alpn = v
		case "ssl-min-ver":
			b.SSLMinVer = v
		case "ciphers":
			b.Ciphers = v
		case "ciphersuites":
			b.Ciphersuites = v
		default:
			return Bind{}, fmt.Errorf("bind option %s not expressible by the data plane api driver", w[i])
		}
		i++
	}
	return b, nil
}

func parseStickTable(w []string) (*StickTable, error) {
	st := &StickTable{}
	if len(w)%2 != 0 {
		return nil, fmt.Errorf("stick-table options are not name/value pairs")
	}
	for i := 0; i < len(w); i += 2 {
		k, v := w[i], w[i+1]
		switch k {
		case "type":
			st.Type = v
		case "store":
			st.Store = v
		case "expire":
			if err := setMillis(&st.Expire, v); err != nil {
				return nil, err
			}
		case "size":
			n, err := parseSize(v)
			if err != nil {
				return nil, err
			}
			st.Size = ptr(n)
		default:
			return nil, fmt.Errorf("stick-table option %s not expressible by the data plane api driver", k)
		}
	}
	return st, nil
}

// appendRule parses the rule line t onto the end of rules, its index its place there.
func appendRule(rules *[]Rule, t string) error {
	r, err := parseRule(t)
	if err != nil {
		return err
	}
	r.Index = ptr(len(*rules))
	*rules = append(*rules, r)
	return nil
}

// parseRule reads "http-request|http-response <action> [args] [if <condition>]".
func parseRule(t string) (Rule, error) {
	body := strings.TrimSpace(t[strings.IndexByte(t, ' ')+1:])
	var r Rule
	if i := strings.Index(body, " if "); i >= 0 {
		r.Cond, r.CondTest = "if", strings.TrimSpace(body[i+4:])
		body = body[:i]
	}
	action, args, _ := strings.Cut(body, " ")
	args = strings.TrimSpace(args)
	w := strings.Fields(args)
	switch {
	case strings.HasPrefix(action, "set-var(") && strings.HasSuffix(action, ")"):
		scope, name, ok := strings.Cut(strings.TrimSuffix(strings.TrimPrefix(action, "set-var("), ")"), ".")
		if !ok || args == "" {
			return Rule{}, fmt.Errorf("set-var needs scope.name and an expression")
		}
		r.Type, r.VarScope, r.VarName, r.VarExpr = "set-var", scope, name, args
	case strings.HasPrefix(action, "track-sc") && len(w) == 1:
		n, err := strconv.Atoi(strings.TrimPrefix(action, "track-sc"))
		if err != nil {
			return Rule{}, fmt.Errorf("track-sc counter: %w", err)
		}
		r.Type, r.TrackScCounter, r.TrackScKey = "track-sc", ptr(n), w[0]
	case strings.HasPrefix(action, "sc-inc-gpc0(") && strings.HasSuffix(action, ")") && args == "":
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(action, "sc-inc-gpc0("), ")"))
		if err != nil {
			return Rule{}, fmt.Errorf("sc-inc-gpc0 counter: %w", err)
		}
		r.Type, r.ScID = "sc-inc-gpc0", ptr(n)
	case action == "deny" && len(w) == 2 && w[0] == "deny_status":
		n, err := strconv.Atoi(w[1])
		if err != nil {
			return Rule{}, fmt.Errorf("deny_status: %w", err)
		}
		r.Type, r.DenyStatus = "deny", ptr(n)
	case action == "return":
		if err := parseReturn(&r, args); err != nil {
			return Rule{}, err
		}
	case (action == "set-dst" || action == "set-dst-port") && args != "":
		r.Type, r.Expr = action, args
	case action == "del-header" && len(w) == 1:
		r.Type, r.HdrName = "del-header", w[0]
	case action == "set-header" && len(w) >= 2:
		r.Type, r.HdrName, r.HdrFormat = "set-header", w[0], strings.TrimSpace(strings.TrimPrefix(args, w[0]))
	default:
		return Rule{}, fmt.Errorf("rule %q not expressible by the data plane api driver", action)
	}
	return r, nil
}

// parseReturn reads "status <code> content-type <type> string <text>".
func parseReturn(r *Rule, args string) error {
	r.Type = "return"
	rest := args
	for rest != "" {
		var k string
		k, rest, _ = strings.Cut(rest, " ")
		switch k {
		case "status", "content-type":
			var v string
			v, rest, _ = strings.Cut(rest, " ")
			if k == "content-type" {
				r.ReturnType = v
				continue
			}
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("return status: %w", err)
			}
			r.ReturnStatusCode = ptr(n)
		case "string", "lf-string":
			r.ReturnFormat, r.ReturnContent, rest = k, strings.TrimSpace(rest), ""
		default:
			return fmt.Errorf("return option %s not expressible by the data plane api driver", k)
		}
	}
	return nil
}

// setMillis reads an HAProxy duration (a number with an optional ms/s/m/h/d unit, ms by
// default) into milliseconds, the unit of the API's timeouts.
func setMillis(dst **int64, s string) error {
	units := []struct {
		suffix string
		ms     int64
	}{{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}}
	mult := int64(1)
	num := s
	for _, u := range units {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = v, u.ms
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("duration %q: not a whole number of ms/s/m/h/d", s)
	}
	*dst = ptr(n * mult)
	return nil
}

// parseSize reads an HAProxy size with an optional k/m/g suffix (powers of 1024).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "k"):
		mult, s = 1<<10, strings.TrimSuffix(s, "k")
	case strings.HasSuffix(s, "m"):
		mult, s = 1<<20, strings.TrimSuffix(s, "m")
	case strings.HasSuffix(s, "g"):
		mult, s = 1<<30, strings.TrimSuffix(s, "g")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: not a whole number with k/m/g", s)
	}
	return n * mult, nil
}

func ptr[T any](v T) *T { return &v }
