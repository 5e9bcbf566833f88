// Package validate checks everything under deploy/ without a cluster or the internet: Kubernetes
// manifests against the API's own OpenAPI document (through kubeconform, strict), Prometheus
// rules, the Grafana dashboard, NATS configurations and the metric names the docs promise.
package validate

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// KubernetesModule is the module whose api/openapi-spec/swagger.json the manifests are checked
// against; the go command verifies its checksum against the checksum database.
const KubernetesModule = "k8s.io/kubernetes@v1.37.2"

// SchemaLocation is the kubeconform path template for schemas written by WriteSchemas.
func SchemaLocation(dir string) string {
	return filepath.Join(dir, "{{ .ResourceKind }}{{ .KindSuffix }}.json")
}

// DownloadSwagger fetches KubernetesModule through the Go module proxy (or finds it in the module
// cache) and returns the path of its swagger.json.
func DownloadSwagger() (string, error) {
	cmd := exec.Command("go", "mod", "download", "-json", KubernetesModule)
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	cmd.Dir = os.TempDir()
	out, err := cmd.Output()
	if err != nil {
		var detail string
		if ee, ok := err.(*exec.ExitError); ok {
			detail = strings.TrimSpace(string(ee.Stderr))
		}
		return "", fmt.Errorf("go mod download %s: %w %s %s", KubernetesModule, err, detail, out)
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("go mod download %s: %w", KubernetesModule, err)
	}
	if info.Error != "" || info.Dir == "" {
		return "", fmt.Errorf("go mod download %s: %s", KubernetesModule, info.Error)
	}
	return filepath.Join(info.Dir, "api", "openapi-spec", "swagger.json"), nil
}

// WriteSchemas turns the OpenAPI v2 document at swaggerPath into kubeconform's layout in dir: one
// file per kind named <kind>-<group>-<version>.json referring into _definitions.json. Every object
// with declared properties refuses others (kubeconform's "strict"), int-or-string fields accept
// both, and quantities accept numbers, as the API server does.
func WriteSchemas(swaggerPath, dir string) error {
	b, err := os.ReadFile(swaggerPath)
	if err != nil {
		return fmt.Errorf("read swagger: %w", err)
	}
	var doc struct {
		Definitions map[string]map[string]any `json:"definitions"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("parse %s: %w", swaggerPath, err)
	}
	if len(doc.Definitions) == 0 {
		return fmt.Errorf("%s has no definitions", swaggerPath)
	}
	for name, def := range doc.Definitions {
		if name == "io.k8s.apimachinery.pkg.api.resource.Quantity" {
			doc.Definitions[name] = map[string]any{"oneOf": []any{
				map[string]any{"type": "string"}, map[string]any{"type": "number"},
			}}
			continue
		}
		strict(def)
	}
	defs, err := json.Marshal(map[string]any{"definitions": doc.Definitions})
	if err != nil {
		return fmt.Errorf("encode definitions: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "_definitions.json"), defs, 0o644); err != nil {
		return fmt.Errorf("write definitions: %w", err)
	}
	for name, def := range doc.Definitions {
		gvks, _ := def["x-kubernetes-group-version-kind"].([]any)
		for _, g := range gvks {
			gvk, _ := g.(map[string]any)
			group, _ := gvk["group"].(string)
			version, _ := gvk["version"].(string)
			kind, _ := gvk["kind"].(string)
			if kind == "" || version == "" {
				continue
			}
			suffix := "-" + version
			if group != "" {
				suffix = "-" + strings.ToLower(strings.Split(group, ".")[0]) + suffix
			}
			ref, err := json.Marshal(map[string]any{"$ref": "_definitions.json#/definitions/" + name})
			if err != nil {
				return fmt.Errorf("encode %s: %w", name, err)
			}
			file := filepath.Join(dir, strings.ToLower(kind)+suffix+".json")
			if err := os.WriteFile(file, ref, 0o644); err != nil {
				return fmt.Errorf("write %s: %w", file, err)
			}
		}
	}
	return nil
}

// strict rewrites one schema in place, recursively.
func strict(s map[string]any) {
	if s["format"] == "int-or-string" {
		delete(s, "type")
		delete(s, "format")
		s["oneOf"] = []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}
	}
	if props, ok := s["properties"].(map[string]any); ok {
		if _, set := s["additionalProperties"]; !set {
			s["additionalProperties"] = false
		}
		for _, p := range props {
			if m, ok := p.(map[string]any); ok {
				strict(m)
			}
		}
	}
	for _, key := range []string{"items", "additionalProperties"} {
		if m, ok := s[key].(map[string]any); ok {
			strict(m)
		}
	}
	for _, key := range []string{"allOf", "anyOf", "oneOf"} {
		if list, ok := s[key].([]any); ok {
			for _, item := range list {
				if m, ok := item.(map[string]any); ok {
					strict(m)
				}
			}
		}
	}
}
