// Package jsonbody decodes request bodies into "<field>: <reason>" errors that a client can act on
// and that never repeat the value sent, which may be a secret. It also bounds what is read.
package jsonbody

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
)

// MaxBytes is the largest body read; a larger one is ErrTooLarge.
const MaxBytes = 64 << 10

// ErrTooLarge is returned by Read for a body over MaxBytes.
var ErrTooLarge = fmt.Errorf("body: larger than %d bytes", MaxBytes)

// Read reads r's body, at most MaxBytes.
func Read(r *http.Request) ([]byte, error) {
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

// Decode reads exactly one JSON object into v, turning decoder errors into "<field>: <reason>".
// Unknown fields are ignored, as the reference extension does.
func Decode(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return errors.New("body: a JSON object is required")
	}
	if bytes.TrimSpace(body)[0] != '{' {
		return errors.New("body: must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
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
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("body: unexpected data after the JSON object")
	}
	return nil
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
