package validate

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"sigs.k8s.io/yaml"
)

// The schema check proves the manifests are well-formed; these prove they say what livegate needs.

type obj = map[string]any

func decode(t *testing.T, rel string) obj {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(kubeDir, rel))
	if err != nil {
		t.Fatal(err)
	}
	var o obj
	if err := yaml.Unmarshal(b, &o); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	return o
}

// at follows keys (string) and list indexes (int) through decoded YAML.
func at(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := v.(obj)
			v = m[k]
		case int:
			l, _ := v.([]any)
			if k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func podSpec(o obj) obj {
	spec, _ := at(o, "spec", "template", "spec").(obj)
	return spec
}

func container(t *testing.T, spec obj, name string) obj {
	t.Helper()
	list, _ := spec["containers"].([]any)
	for _, c := range list {
		if m, _ := c.(obj); m["name"] == name {
			return m
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

func texts(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, s := range l {
		out = append(out, fmt.Sprint(s))
	}
	return out
}

func TestAgentSidecarProbesTheSessionAPI(t *testing.T) {
	spec := podSpec(decode(t, "agent-sidecar/deployment.yaml"))
	if containers, _ := spec["containers"].([]any); len(containers) < 2 || spec["hostNetwork"] == true {
		t.Fatalf("want an app and the agent sharing the pod's own network namespace")
	}
	agent := container(t, spec, "livegate-agent")
	for probe, path := range map[string]string{"startupProbe": "/v1/streaming/startup", "readinessProbe": "/v1/streaming/ready"} {
		get := at(agent, probe, "httpGet")
		if at(get, "path") != path || fmt.Sprint(at(get, "port")) != "8011" {
			t.Errorf("%s = %v, want GET %s on 8011", probe, get, path)
		}
	}
}

func TestEdgeDaemonSetOwnsTheHostNetwork(t *testing.T) {
	spec := podSpec(decode(t, "edgeproxy/daemonset.yaml"))
	if spec["hostNetwork"] != true || spec["dnsPolicy"] != "ClusterFirstWithHostNet" {
		t.Errorf("hostNetwork %v dnsPolicy %v, want host network with ClusterFirstWithHostNet", spec["hostNetwork"], spec["dnsPolicy"])
	}
	edge := container(t, spec, "edgeproxy")
	caps := at(edge, "securityContext", "capabilities")
	if !slices.Contains(texts(at(caps, "add")), "NET_ADMIN") || !slices.Contains(texts(at(caps, "drop")), "ALL") ||
		at(edge, "securityContext", "privileged") == true {
		t.Errorf("edge capabilities %v: want ALL dropped, NET_ADMIN added, not privileged", caps)
	}
	if cmd := texts(container(t, spec, "haproxy")["command"]); len(cmd) == 0 || cmd[0] != "/usr/sbin/haproxy" {
		t.Errorf("haproxy container command %q, want the edge image's /usr/sbin/haproxy", cmd)
	}
}

// livegateImages are the repositories `make images` tags (deploy/images/internal/assemble), by
// the manifest whose livegate containers run them.
var livegateImages = map[string]string{
	"edgeproxy/daemonset.yaml":      "livegate/livegate-edgeproxy",
	"agent-sidecar/deployment.yaml": "livegate/livegate-agent",
}

// TestManifestsRunTheBuiltImages: every container of the edge's pod (HAProxy and the init step
// included) runs the edge image, the agent sidecar the agent image, and the kustomization maps
// both names.
func TestManifestsRunTheBuiltImages(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(kubeDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Images []struct {
			Name string `json:"name"`
		} `json:"images"`
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	var mapped []string
	for _, i := range k.Images {
		mapped = append(mapped, i.Name)
	}
	for rel, image := range livegateImages {
		if !slices.Contains(mapped, image) {
			t.Errorf("kustomization.yaml maps no image %s (it maps %v)", image, mapped)
		}
		spec := podSpec(decode(t, rel))
		for _, list := range []string{"initContainers", "containers"} {
			cs, _ := spec[list].([]any)
			for _, c := range cs {
				m, _ := c.(obj)
				if rel == "agent-sidecar/deployment.yaml" && m["name"] != "livegate-agent" {
					continue
				}
				if m["image"] != image {
					t.Errorf("%s: %s %v runs %v, want %s", rel, list, m["name"], m["image"], image)
				}
			}
		}
	}
}

func TestNATSIsAThreeNodeJetStreamCluster(t *testing.T) {
	ss := decode(t, "nats/statefulset.yaml")
	if fmt.Sprint(at(ss, "spec", "replicas")) != "3" || at(ss, "spec", "serviceName") != "nats-headless" {
		t.Errorf("replicas %v serviceName %v, want 3 behind nats-headless", at(ss, "spec", "replicas"), at(ss, "spec", "serviceName"))
	}
	if at(ss, "spec", "volumeClaimTemplates", 0) == nil {
		t.Errorf("want a volume claim template for the JetStream store")
	}
}
