// Package jsonbody decodes request bodies into "<field>: <reason>" errors that a client can act on
// and that never repeat the value sent, which may be a secret. It also bounds what is read.
package jsonbody

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strings"
)

// MaxBytes is the largest body read; a larger one is ErrTooLarge.
const MaxBytes = 64 << 10

// ErrTooLarge is returned by Read for a body over MaxBytes.
var ErrTooLarge = fmt.Errorf("body: larger than %d bytes", MaxBytes)

// ErrNotJSON is returned by Read for a body that does not say it is JSON. Requiring the type keeps
// a cross-site form or "simple" request (text/plain), which a browser sends without asking, from
// changing the session.
var ErrNotJSON = errors.New("Content-Type: must be application/json")

// Read reads r's body, at most MaxBytes, if its Content-Type is application/json or a +json type.
func Read(r *http.Request) ([]byte, error) {
	if !isJSON(r.Header.Get("Content-Type")) {
		return nil, ErrNotJSON
	}
	if r.ContentLength > MaxBytes {
		return nil, ErrTooLarge
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, MaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	if len(b) > MaxBytes {
		return nil, ErrTooLarge
	}
	return b, nil
}

func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false
	}
	typ, sub, _ := strings.Cut(mt, "/")
	return typ == "application" && (sub == "json" || strings.HasSuffix(sub, "+json"))
}

// Decode reads exactly one JSON object into v (a pointer to a struct), turning decoder errors into
// "<field>: <reason>". A member is v's field only if its name is the field's JSON name exactly, as
// the reference's models read it: encoding/json alone would take "SessionID" for "sessionId".
// Unknown members are ignored, as the reference extension does.
func Decode(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return errors.New("body: a JSON object is required")
	}
	if bytes.TrimSpace(body)[0] != '{' {
		return errors.New("body: must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var members map[string]json.RawMessage
	if err := dec.Decode(&members); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("body: unexpected data after the JSON object")
	}
	exact, err := exactMembers(members, reflect.TypeOf(v).Elem())
	if err != nil {
		return decodeError(err)
	}
	if err := json.Unmarshal(exact, v); err != nil {
		return decodeError(err)
	}
	return nil
}

// exactMembers re-encodes members keeping only those named exactly as a field of t, at every
// depth of nested objects.
func exactMembers(members map[string]json.RawMessage, t reflect.Type) ([]byte, error) {
	fields := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			fields[name] = f.Type
		}
	}
	kept := map[string]json.RawMessage{}
	for name, raw := range members {
		ft, ok := fields[name]
		if !ok {
			continue
		}
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) {
			var inner map[string]json.RawMessage
			if err := json.Unmarshal(raw, &inner); err != nil {
				return nil, err
			}
			b, err := exactMembers(inner, ft)
			if err != nil {
				return nil, err
			}
			raw = b
		}
		kept[name] = raw
	}
	return json.Marshal(kept)
}

func decodeError(err error) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr) && typeErr.Field != "":
		return fmt.Errorf("%s: must be %s", typeErr.Field, describe(typeErr))
	case errors.As(err, &syntaxErr):
		return fmt.Errorf("body: malformed JSON at offset %d", syntaxErr.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("body: malformed JSON: unexpected end")
	}
	return errors.New("body: malformed JSON")
}

func describe(e *json.UnmarshalTypeError) string {
	switch e.Type.Kind() {
	case reflect.Int:
		return "an integer"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "an array of strings"
	case reflect.Struct, reflect.Pointer:
		return "an object"
	}
	return "of type " + e.Type.String()
}
