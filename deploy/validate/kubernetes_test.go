package validate

import (
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/yannh/kubeconform/pkg/resource"
	"github.com/yannh/kubeconform/pkg/validator"
	"sigs.k8s.io/yaml"
)

const repoRoot = "../.."

var kubeDir = filepath.Join(repoRoot, "deploy", "kubernetes")

var (
	schemaOnce sync.Once
	schemaDir  string
	schemaErr  error
)

// schemas writes the strict JSON schemas once per test binary.
func schemas(t *testing.T) string {
	t.Helper()
	schemaOnce.Do(func() {
		swagger, err := DownloadSwagger()
		if err != nil {
			schemaErr = err
			return
		}
		schemaDir, schemaErr = os.MkdirTemp("", "livegate-kubeschemas-")
		if schemaErr != nil {
			return
		}
		schemaErr = WriteSchemas(swagger, schemaDir)
	})
	if schemaErr != nil {
		t.Fatalf("kubernetes schemas: %v", schemaErr)
	}
	return schemaDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, dir := range []string{schemaDir, binDir} {
		if dir != "" {
			_ = os.RemoveAll(dir)
		}
	}
	os.Exit(code)
}

// manifests lists every YAML file under deploy/kubernetes except the kustomization.
func manifests(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(kubeDir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) && d.Name() != "kustomization.yaml" {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no manifests under %s", kubeDir)
	}
	sort.Strings(files)
	return files
}

func TestKubernetesManifestsMatchTheAPISchema(t *testing.T) {
	v, err := validator.New([]string{SchemaLocation(schemas(t))}, validator.Opts{Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range manifests(t) {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		results := v.Validate(file, f)
		if len(results) == 0 {
			t.Errorf("%s: no resources", file)
		}
		for _, r := range results {
			sig, _ := r.Resource.Signature()
			name := file
			if sig != nil {
				name = file + ": " + sig.Kind + "/" + sig.Name
			}
			switch r.Status {
			case validator.Valid:
				t.Logf("valid: %s", name)
			case validator.Empty:
			default:
				msgs := []string{}
				if r.Err != nil {
					msgs = append(msgs, r.Err.Error())
				}
				for _, ve := range r.ValidationErrors {
					msgs = append(msgs, ve.Path+": "+ve.Msg)
				}
				t.Errorf("%s: %s", name, strings.Join(msgs, "; "))
			}
		}
	}
}

// TestKubeconformRejectsMistakes guards the check itself: a schema that accepts anything would
// pass every manifest.
func TestKubeconformRejectsMistakes(t *testing.T) {
	v, err := validator.New([]string{SchemaLocation(schemas(t))}, validator.Opts{Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	for name, doc := range map[string]string{
		"unknown field": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndatta: {}\n",
		"wrong type":    "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: two, selector: {}, template: {}}\n",
		"missing field": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {containers: [{image: x}]}}}\n",
		"unknown kind":  "apiVersion: v1\nkind: Deploymant\nmetadata: {name: x}\n",
		"probe typo":    "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: a, image: b, readinessProbe: {httpGet: {path: /, prot: 8011}}}]}\n",
	} {
		r := v.ValidateResource(resourceOf(name, doc))
		if r.Status == validator.Valid {
			t.Errorf("%s: accepted", name)
		}
	}
	ok := "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 80, targetPort: http}, {port: 81, targetPort: 8081}]}\n"
	if r := v.ValidateResource(resourceOf("int-or-string", ok)); r.Status != validator.Valid {
		t.Errorf("int-or-string ports refused: %v %v", r.Err, r.ValidationErrors)
	}
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(kubeDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	for _, file := range manifests(t) {
		rel, _ := filepath.Rel(kubeDir, file)
		if !slices.Contains(k.Resources, filepath.ToSlash(rel)) {
			t.Errorf("kustomization.yaml does not list %s", rel)
		}
	}
	for _, r := range k.Resources {
		if _, err := os.Stat(filepath.Join(kubeDir, r)); err != nil {
			t.Errorf("kustomization.yaml lists %s: %v", r, err)
		}
	}
}

func resourceOf(path, doc string) resource.Resource {
	return resource.Resource{Path: path, Bytes: []byte(doc)}
}
