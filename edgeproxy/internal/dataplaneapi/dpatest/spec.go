package dpatest

import (
	_ "embed"
	"fmt"
	"sync"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/oasdiff/yaml"
)

// specYAML is a verbatim copy of the Data Plane API v2 document the driver is written against
// (../shared/reference/dataplaneapi-v2-openapi.yaml), embedded so the fake works from any checkout.
//
//go:embed dataplaneapi-v2-openapi.yaml
var specYAML []byte

// Spec is the loaded document and a router over it.
type Spec struct {
	Doc    *openapi3.T
	Router routers.Router
}

var (
	specOnce sync.Once
	spec     *Spec
	specErr  error
)

// LoadSpec reads the Swagger 2.0 document once per process, converts it to OpenAPI 3 for
// kin-openapi's validator and builds a router whose server is the document's basePath.
func LoadSpec() (*Spec, error) {
	specOnce.Do(func() { spec, specErr = loadSpec(specYAML) })
	return spec, specErr
}

func loadSpec(b []byte) (*Spec, error) {
	var d2 openapi2.T
	if _, err := yaml.Unmarshal(b, &d2, yaml.DecodeOpts{DisableTimestamps: true}); err != nil {
		return nil, fmt.Errorf("data plane api document: %w", err)
	}
	d3, err := openapi2conv.ToV3(&d2)
	if err != nil {
		return nil, fmt.Errorf("convert data plane api document: %w", err)
	}
	for _, s := range d3.Components.Schemas {
		flattenAllOf(s.Value, map[*openapi3.Schema]bool{})
	}
	d3.Servers = openapi3.Servers{{URL: d2.BasePath}}
	r, err := gorillamux.NewRouter(d3)
	if err != nil {
		return nil, fmt.Errorf("route data plane api document: %w", err)
	}
	return &Spec{Doc: d3, Router: r}, nil
}

// flattenAllOf merges allOf members into the schema, as go-swagger (which generates the real
// Data Plane API) does. Under plain JSON Schema rules the document's "allOf + additionalProperties:
// false" objects (bind, server, ...) would refuse every property.
func flattenAllOf(s *openapi3.Schema, seen map[*openapi3.Schema]bool) {
	if s == nil || seen[s] {
		return
	}
	seen[s] = true
	for _, p := range s.Properties {
		flattenAllOf(p.Value, seen)
	}
	if s.Items != nil {
		flattenAllOf(s.Items.Value, seen)
	}
	if len(s.AllOf) == 0 {
		return
	}
	closed := s.AdditionalProperties.Has != nil && !*s.AdditionalProperties.Has
	props := openapi3.Schemas{}
	for k, v := range s.Properties {
		props[k] = v
	}
	required := append([]string(nil), s.Required...)
	for _, m := range s.AllOf {
		if m.Value == nil {
			continue
		}
		flattenAllOf(m.Value, seen)
		if m.Value.AdditionalProperties.Has != nil && !*m.Value.AdditionalProperties.Has {
			closed = true
		}
		for k, v := range m.Value.Properties {
			props[k] = v
		}
		required = append(required, m.Value.Required...)
	}
	s.AllOf = nil
	s.Type = &openapi3.Types{openapi3.TypeObject}
	s.Properties = props
	s.Required = required
	if closed {
		no := false
		s.AdditionalProperties = openapi3.AdditionalProperties{Has: &no}
	}
	// Examples of the merged parts are not validated against the merged schema.
	s.Example = nil
}

// components maps the fake's object kinds to their definitions.
var components = map[string]string{
	"Frontend": "frontend", "Backend": "backend", "Bind": "bind", "Server": "server",
	"HTTPRequestRule": "http_request_rule", "HTTPResponseRule": "http_response_rule",
}

// checkDependencies enforces the document's x-dependency extension, which JSON Schema cannot
// express: a field with x-dependency {other: {value: [v...]}} may only be set when other is one of
// the values (or set at all, without value), and must be set then when the dependency says
// required.
func (sp *Spec) checkDependencies(kind string, o map[string]any) []string {
	ref := sp.Doc.Components.Schemas[components[kind]]
	if ref == nil || ref.Value == nil {
		return nil
	}
	var out []string
	for name, p := range ref.Value.Properties {
		if p.Value == nil {
			continue
		}
		deps, _ := p.Value.Extensions["x-dependency"].(map[string]any)
		_, present := o[name]
		for other, raw := range deps {
			spec, _ := raw.(map[string]any)
			v, otherPresent := o[other]
			matches := otherPresent && (spec["value"] == nil || oneOf(v, spec["value"]))
			if present && !matches {
				out = append(out, fmt.Sprintf("%s.%s is set but %s is %v (x-dependency %v)", components[kind], name, other, v, spec["value"]))
			}
			if !present && matches && spec["required"] == true {
				out = append(out, fmt.Sprintf("%s.%s is required when %s is %v", components[kind], name, other, v))
			}
		}
	}
	return out
}

func oneOf(v any, values any) bool {
	list, ok := values.([]any)
	if !ok {
		list = []any{values}
	}
	for _, x := range list {
		if fmt.Sprint(x) == fmt.Sprint(v) {
			return true
		}
	}
	return false
}
