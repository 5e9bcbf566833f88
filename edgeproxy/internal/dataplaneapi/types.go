package dataplaneapi

// The few Data Plane API v2 objects livegate sends and reads, with the JSON names of the OpenAPI
// document (definitions map_entry, transaction, reload, error, backend, server, frontend, bind,
// http_request_rule, http_response_rule). Unknown fields in answers are ignored, so comparing what is there with what
// livegate needs only looks at the fields livegate sets.

// mapEntry is one runtime map entry (definition map_entry).
type mapEntry struct {
	ID    string `json:"id,omitempty"`
	Key   string `json:"key"`
	Value string `json:"value"`
}

type mapValue struct {
	Value string `json:"value"`
}

// transaction is definition transaction.
type transaction struct {
	Version int64  `json:"_version,omitempty"`
	ID      string `json:"id,omitempty"`
	Status  string `json:"status,omitempty"`
}

// reload is definition reload; Status is failed, in_progress or succeeded.
type reload struct {
	ID       string `json:"id,omitempty"`
	Status   string `json:"status,omitempty"`
	Response string `json:"response,omitempty"`
}

// apiError is definition error.
type apiError struct {
	Code    *int    `json:"code"`
	Message *string `json:"message"`
}

// Backend is the part of definition backend livegate sets. Timeouts are in milliseconds.
type Backend struct {
	Name           string `json:"name"`
	Mode           string `json:"mode,omitempty"`
	ConnectTimeout *int64 `json:"connect_timeout,omitempty"`
	ServerTimeout  *int64 `json:"server_timeout,omitempty"`
	TunnelTimeout  *int64 `json:"tunnel_timeout,omitempty"`
}

// Server is the part of definition server livegate sets. The document's port is 1..65535, so the
// "any address, any port" server of the dynamic backend is an address without a port, which
// HAProxy treats as 0.0.0.0:0: the connection's (rewritten) destination address and port.
type Server struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Port    *int   `json:"port,omitempty"`
}

// StickTable is definition config_stick_table.
type StickTable struct {
	Type   string `json:"type,omitempty"`
	Size   *int64 `json:"size,omitempty"`
	Expire *int64 `json:"expire,omitempty"`
	Store  string `json:"store,omitempty"`
}

// Frontend is the part of definition frontend livegate sets. Timeouts are in milliseconds.
type Frontend struct {
	Name               string      `json:"name"`
	Mode               string      `json:"mode,omitempty"`
	HTTPLog            bool        `json:"httplog,omitempty"`
	ClientTimeout      *int64      `json:"client_timeout,omitempty"`
	HTTPRequestTimeout *int64      `json:"http_request_timeout,omitempty"`
	StickTable         *StickTable `json:"stick_table,omitempty"`
	DefaultBackend     string      `json:"default_backend,omitempty"`
}

// Bind is the part of definition bind livegate sets.
type Bind struct {
	Name           string `json:"name"`
	Address        string `json:"address"`
	Port           *int   `json:"port,omitempty"`
	SSL            bool   `json:"ssl,omitempty"`
	SSLCertificate string `json:"ssl_certificate,omitempty"`
	Alpn           string `json:"alpn,omitempty"`
	SSLMinVer      string `json:"ssl_min_ver,omitempty"`
	Ciphers        string `json:"ciphers,omitempty"`
	Ciphersuites   string `json:"ciphersuites,omitempty"`
}

// Rule is the part of definitions http_request_rule and http_response_rule livegate sets.
type Rule struct {
	Index            *int   `json:"index"`
	Type             string `json:"type"`
	Cond             string `json:"cond,omitempty"`
	CondTest         string `json:"cond_test,omitempty"`
	VarName          string `json:"var_name,omitempty"`
	VarScope         string `json:"var_scope,omitempty"`
	VarExpr          string `json:"var_expr,omitempty"`
	Expr             string `json:"expr,omitempty"`
	HdrName          string `json:"hdr_name,omitempty"`
	HdrFormat        string `json:"hdr_format,omitempty"`
	DenyStatus       *int   `json:"deny_status,omitempty"`
	ReturnStatusCode *int   `json:"return_status_code,omitempty"`
	ReturnType       string `json:"return_content_type,omitempty"`
	ReturnFormat     string `json:"return_content_format,omitempty"`
	ReturnContent    string `json:"return_content,omitempty"`
	TrackScKey       string `json:"track_sc_key,omitempty"`
	TrackScCounter   *int   `json:"track_sc_stick_counter,omitempty"`
	ScID             *int   `json:"sc_id,omitempty"`
}
