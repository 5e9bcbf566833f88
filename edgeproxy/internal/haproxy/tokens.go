package haproxy

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/livegate/livegate/pkg/sessiontoken"
)

// TokenTable is the stick table that counts the frontend's session token checks by result.
const TokenTable = "livegate_session_tokens"

// Session token modes.
const (
	TokensOff      = "off"
	TokensOptional = "optional"
	TokensRequired = "required"
)

// TokenResults are the results the frontend counts: valid, tokenless (accepted without a token
// in optional mode) and the refusal reasons.
var TokenResults = append([]string{"valid", "tokenless"}, reasonNames()...)

func reasonNames() []string {
	out := make([]string, 0, len(sessiontoken.Reasons))
	for _, r := range sessiontoken.Reasons {
		out = append(out, string(r))
	}
	return out
}

// SessionTokens is the frontend's session token check.
type SessionTokens struct {
	// Mode is off (or empty), optional or required.
	Mode string
	// Keys verify the tokens, tried by kid. ES256 keys are read by HAProxy from File when it
	// loads the configuration; HS256 secrets are written into the configuration.
	Keys []TokenKey
	// Audiences are the aud values accepted ("pool:<pool>", "edge:<edge id>").
	Audiences []string
	// Leeway is the clock skew allowed on nbf and exp, in whole seconds.
	Leeway time.Duration
}

// TokenKey is one verification key.
type TokenKey struct {
	ID, Alg string
	// File is the PEM public key of an ES256 key; Secret the secret of an HS256 key.
	File, Secret string
}

// On says whether the frontend checks tokens.
func (t SessionTokens) On() bool { return t.Mode == TokensOptional || t.Mode == TokensRequired }

func (t SessionTokens) validate() error {
	switch t.Mode {
	case "", TokensOff:
		return nil
	case TokensOptional, TokensRequired:
	default:
		return fmt.Errorf("haproxy session token mode %q: want off, optional or required", t.Mode)
	}
	var errs []error
	if len(t.Keys) == 0 {
		errs = append(errs, errors.New("haproxy session tokens: no verification key"))
	}
	seen := map[string]bool{}
	for _, k := range t.Keys {
		if err := sessiontoken.ValidateKeyID(k.ID); err != nil {
			errs = append(errs, fmt.Errorf("haproxy session token %w", err))
		}
		if seen[k.ID] {
			errs = append(errs, fmt.Errorf("haproxy session token key id %q: used twice", k.ID))
		}
		seen[k.ID] = true
		switch {
		case k.Alg == sessiontoken.ES256 && k.Secret == "":
			if err := checkWord(k.File); err != nil {
				errs = append(errs, fmt.Errorf("haproxy session token key %s file: %w", k.ID, err))
			}
		case k.Alg == sessiontoken.HS256 && k.File == "":
			// The secret goes into a quoted string of the configuration exactly as it is.
			if pk, err := sessiontoken.ParseKey("k"+sessiontoken.SecretExt, []byte(k.Secret)); err != nil || string(pk.Secret) != k.Secret {
				errs = append(errs, fmt.Errorf("haproxy session token key %s: HS256 secret refused", k.ID))
			}
		default:
			errs = append(errs, fmt.Errorf("haproxy session token key %s: want an ES256 key with a file or an HS256 key with a secret", k.ID))
		}
	}
	for _, a := range t.Audiences {
		if err := sessiontoken.ValidateAudience(a); err != nil || a == "" {
			errs = append(errs, fmt.Errorf("haproxy session token audience %q: want pool:<name> or edge:<id>", a))
		}
	}
	if t.Leeway < 0 || t.Leeway%time.Second != 0 {
		errs = append(errs, fmt.Errorf("haproxy session token leeway %s: want whole seconds, not negative", t.Leeway))
	}
	return errors.Join(errs...)
}

// The frontend's rules. Each check overwrites txn.tok_result when it fails, in the reverse of
// the order sessiontoken.Verify checks them, so the result left is the first reason the token
// fails (or valid). The check runs before the session map is consulted: without a good token
// nobody learns whether a session exists.
var _ = template.Must(configTemplate.New("tokens").Funcs(template.FuncMap{
	"shape": func() string { return `"` + strings.ReplaceAll(sessiontoken.Shape, "$", `\$`) + `"` }, "table": func() string { return TokenTable },
	"seconds": func(d time.Duration) string { return strconv.FormatInt(int64(d/time.Second), 10) },
	"join":    strings.Join, "refusals": refusalsFor,
}).Parse(`{{with .Tokens}}{{if .On}}
    # Session tokens (docs/session-tokens.md): x-nv-token.<jwt> in Sec-WebSocket-Protocol.
    http-request set-var(txn.tok) "req.fhdr(sec-websocket-protocol),regsub('^(.*[,[:space:]])?x-nv-token[.]([^,[:space:]]*)([,[:space:]].*)?\$','\\2')" if { req.fhdr(sec-websocket-protocol) -m reg "(^|[,[:space:]])x-nv-token[.]" }
    http-request set-var(txn.tok_kid) var(txn.tok),jwt_header_query('$.kid') if { var(txn.tok) -m found }
    http-request set-var(txn.tok_sid) var(txn.tok),jwt_payload_query('$.sid') if { var(txn.tok) -m found }
    http-request set-var(txn.tok_aud) var(txn.tok),jwt_payload_query('$.aud') if { var(txn.tok) -m found }
    http-request set-var(txn.tok_now) date
    http-request set-var(txn.tok_exp) var(txn.tok),jwt_payload_query('$.exp','int') if { var(txn.tok) -m found }
    http-request set-var(txn.tok_nbf) var(txn.tok),jwt_payload_query('$.nbf','int') if { var(txn.tok) -m found }
    # HAProxy 2.6 saturates the sum of two negative numbers to the largest positive one, so each
    # sum below starts from a positive number: exp+leeway-now and now+leeway-nbf.
    http-request set-var(txn.tok_ttl) var(txn.tok_exp),add({{seconds .Leeway}}),sub(txn.tok_now) if { var(txn.tok_exp) -m found }
    http-request set-var(txn.tok_slack) var(txn.tok_now),add({{seconds .Leeway}}),sub(txn.tok_nbf) if { var(txn.tok_nbf) -m found }
{{- range .Keys}}
    http-request set-var(txn.tok_sig) var(txn.tok),jwt_verify("{{.Alg}}","{{if .File}}{{.File}}{{else}}{{.Secret}}{{end}}") if { var(txn.tok_kid) -m str {{.ID}} }
{{- end}}
    http-request set-var(txn.tok_result) str(valid)
    http-request set-var(txn.tok_result) str(wrong_session) if !{ var(txn.tok_sid),strcmp(txn.sid) eq 0 }
    http-request set-var(txn.tok_result) str(wrong_audience) if { var(txn.tok_aud) -m found }{{if .Audiences}} !{ var(txn.tok_aud) -m str {{join .Audiences " "}} }{{end}}
    http-request set-var(txn.tok_result) str(not_yet_valid) if { var(txn.tok_slack) -m int lt 0 }
    http-request set-var(txn.tok_result) str(expired) if { var(txn.tok_ttl) -m int le 0 }
    http-request set-var(txn.tok_result) str(bad_signature) if !{ var(txn.tok_sig) -m int 1 }
    http-request set-var(txn.tok_result) str(unknown_key) if !{ var(txn.tok_kid) -m str{{range .Keys}} {{.ID}}{{end}} }
    http-request set-var(txn.tok_result) str(malformed) if !{ var(txn.tok) -m reg {{shape}} } || !{ var(txn.tok_kid),length gt 0 } || !{ var(txn.tok_sid),length gt 0 } || !{ var(txn.tok_ttl) -m found } || !{ var(txn.tok_slack) -m found }
    http-request set-var(txn.tok_result) str({{if eq .Mode "required"}}missing{{else}}tokenless{{end}}) if !{ var(txn.tok) -m found }
    # sc2: sc0 is the address of --miss-limit, sc1 is left for other per-client counters.
    http-request track-sc2 var(txn.tok_result) table {{table}}
{{- with refusals .Mode 401}}
    http-request return status 401 content-type text/plain hdr WWW-Authenticate Bearer lf-string "session token refused: %[var(txn.tok_result)]" if { var(txn.tok_result) -m str {{join . " "}} }
{{- end}}
{{- with refusals .Mode 403}}
    http-request return status 403 content-type text/plain lf-string "session token refused: %[var(txn.tok_result)]" if { var(txn.tok_result) -m str {{join . " "}} }
{{- end}}
{{- end}}{{end}}`))

var _ = template.Must(configTemplate.New("token_table").Funcs(template.FuncMap{"table": func() string { return TokenTable }}).Parse(`{{if .Tokens.On}}

# Session token checks by result, read by livegate-edgeproxy with "show table {{table}}".
backend {{table}}
    stick-table type string len 32 size 64 store http_req_cnt
{{- end}}`))

// refusalsFor lists the results refused with status in mode.
func refusalsFor(mode string, status int) []string {
	var out []string
	for _, r := range sessiontoken.Reasons {
		if r.Status() == status && (r != sessiontoken.Missing || mode == TokensRequired) {
			out = append(out, string(r))
		}
	}
	return out
}

// TokenCounts reads the frontend's session token checks by result from the runtime API. The
// counts start at zero with each HAProxy worker: a reload resets them.
func (c *Client) TokenCounts(ctx context.Context) (map[string]uint64, error) {
	cmd, err := NewCommand("show", "table", TokenTable)
	if err != nil {
		return nil, err
	}
	out, err := c.Exec(ctx, cmd)
	if err != nil {
		return nil, fmt.Errorf("read session token counts: %w", err)
	}
	return ParseTokenTable(out)
}

// ParseTokenTable reads the entries of `show table` output: key=<result> ... http_req_cnt=<n>.
func ParseTokenTable(out string) (map[string]uint64, error) {
	counts := map[string]uint64{}
	for line := range strings.SplitSeq(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var key, cnt string
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "key="); ok {
				key = v
			} else if v, ok := strings.CutPrefix(f, "http_req_cnt="); ok {
				cnt = v
			}
		}
		n, err := strconv.ParseUint(cnt, 10, 64)
		if key == "" || err != nil {
			return nil, fmt.Errorf("haproxy session token table: unexpected line %q", line)
		}
		counts[key] = n
	}
	return counts, nil
}
