package assemble

import (
	"archive/tar"
	"testing"
	"time"

	"github.com/livegate/livegate/deploy/images/internal/debian"
	"github.com/livegate/livegate/deploy/images/internal/layer"
)

func inputs() Inputs {
	return Inputs{
		Binary: []byte("\x7fELF binary"), Version: "v1.2.3", Revision: "0123456789ab", Source: "https://example.test/livegate",
		Created: time.Unix(1700000000, 0), Arch: "amd64", CACertificates: []byte("-----BEGIN CERTIFICATE-----\n"),
		Packages: func(tree *layer.Tree, roots []string) ([]debian.Package, error) {
			// Map order differs from run to run: the layer must not.
			files := map[string]string{"/usr/sbin/haproxy": "h", "/usr/sbin/xtables-nft-multi": "x", "/lib/x86_64-linux-gnu/libc.so.6": "c"}
			for p, d := range files {
				if err := tree.Add(layer.Entry{Path: p, Type: tar.TypeReg, Mode: 0o755, Data: []byte(d)}); err != nil {
					return nil, err
				}
			}
			return []debian.Package{{Name: "haproxy", Version: "2.6.12-1", Arch: "amd64", Source: "haproxy", SourceVersion: "2.6.12-1"}}, nil
		},
	}
}

func TestBuildIsReproducible(t *testing.T) {
	for _, s := range []Spec{Agent, Edge} {
		a, err := Build(s, inputs())
		if err != nil {
			t.Fatal(err)
		}
		da, _ := a.Digest()
		for range 3 {
			b, err := Build(s, inputs())
			if err != nil {
				t.Fatal(err)
			}
			if db, _ := b.Digest(); db != da {
				t.Fatalf("%s: two builds of the same inputs: %s and %s", s.Name, da, db)
			}
		}
		in := inputs()
		in.Binary = []byte("another binary")
		c, err := Build(s, in)
		if err != nil {
			t.Fatal(err)
		}
		if dc, _ := c.Digest(); dc == da {
			t.Fatalf("%s: a different binary made the same digest", s.Name)
		}
	}
}

func TestBuildConfig(t *testing.T) {
	img, err := Build(Edge, inputs())
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if len(c.Entrypoint) != 1 || c.Entrypoint[0] != Edge.Binary || c.User != "0:0" || cf.Architecture != "amd64" || cf.OS != "linux" {
		t.Errorf("config %+v", cf)
	}
	if c.Labels[LabelVersion] != "v1.2.3" || c.Labels[LabelRevision] != "0123456789ab" || c.Labels[LabelSource] != "https://example.test/livegate" {
		t.Errorf("labels %v", c.Labels)
	}
	if _, ok := c.ExposedPorts["48322/tcp"]; !ok || len(c.ExposedPorts) != len(Edge.Ports) {
		t.Errorf("exposed ports %v", c.ExposedPorts)
	}
	if !cf.Created.Equal(time.Unix(1700000000, 0)) || len(cf.History) != 3 {
		t.Errorf("created %s, history %v", cf.Created, cf.History)
	}
	layers, _ := img.Layers()
	if len(layers) != 3 {
		t.Fatalf("%d layers, want base, packages, binary", len(layers))
	}
	agent, err := Build(Agent, inputs())
	if err != nil {
		t.Fatal(err)
	}
	al, _ := agent.Layers()
	if len(al) != 2 {
		t.Fatalf("agent: %d layers, want base and binary", len(al))
	}
	// The base layer is the same in both: a registry or node stores it once.
	d1, _ := al[0].Digest()
	d2, _ := layers[0].Digest()
	if d1 != d2 {
		t.Errorf("base layers differ: %s, %s", d1, d2)
	}
}

func TestBuildRefuses(t *testing.T) {
	for name, change := range map[string]func(*Inputs){
		"no binary":         func(in *Inputs) { in.Binary = nil },
		"no version":        func(in *Inputs) { in.Version = "" },
		"no package source": func(in *Inputs) { in.Packages = nil },
		"foreign arch":      func(in *Inputs) { in.Arch = "arm64" },
	} {
		in := inputs()
		change(&in)
		if _, err := Build(Edge, in); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
