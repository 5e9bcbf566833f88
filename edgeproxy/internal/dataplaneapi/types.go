package dataplaneapi

// The few Data Plane API v2 objects livegate sends and reads, with the JSON names of the OpenAPI
// document (definitions map_entry, transaction, reload, error, backend, server, frontend, bind,
// http_request_rule). Unknown fields in answers are ignored, so comparing what is there with what
// livegate needs only looks at the fields livegate sets.

// MapEntry is one runtime map entry (definition map_entry).
type MapEntry struct {
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

// Balance is definition balance.
type Balance struct {
	Algorithm string `json:"algorithm"`
}

// Backend is the part of definition backend livegate sets.
type Backend struct {
	Name    string   `json:"name"`
	Mode    string   `json:"mode,omitempty"`
	Balance *Balance `json:"balance,omitempty"`
}

// Server is the part of definition server livegate sets. The document's port is 1..65535, so the
// "any address, any port" server of the dynamic backend is an address without a port.
type Server struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Port    *int   `json:"port,omitempty"`
}

// StickTable is definition config_stick_table.
type StickTable struct {
	Type   string `json:"type,omitempty"`
	Size   *int   `json:"size,omitempty"`
	Expire *int   `json:"expire,omitempty"`
	Store  string `json:"store,omitempty"`
}

// Frontend is the part of definition frontend livegate sets.
type Frontend struct {
	Name           string      `json:"name"`
	Mode           string      `json:"mode,omitempty"`
	DefaultBackend string      `json:"default_backend,omitempty"`
	StickTable     *StickTable `json:"stick_table,omitempty"`
}

// Bind is the part of definition bind livegate sets.
type Bind struct {
	Name           string `json:"name"`
	Address        string `json:"address"`
	Port           *int   `json:"port,omitempty"`
	SSL            bool   `json:"ssl,omitempty"`
	SSLCertificate string `json:"ssl_certificate,omitempty"`
	Alpn           string `json:"alpn,omitempty"`
}

// HTTPRequestRule is the part of definition http_request_rule livegate sets.
type HTTPRequestRule struct {
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
	TrackScKey       string `json:"track_sc_key,omitempty"`
	TrackScTable     string `json:"track_sc_table,omitempty"`
	TrackScCounter   *int   `json:"track_sc_stick_counter,omitempty"`
}
