package ociarchive

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestArchiveReadsBothWays: crane push reads the docker-save side (tarball.ImageFromPath), OCI
// tools the layout; both find the same image, with the digest the build reported.
func TestArchiveReadsBothWays(t *testing.T) {
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	var a, b bytes.Buffer
	mtime := time.Unix(1700000000, 0)
	if err := Write(&a, img, "livegate/livegate-agent:v1", mtime); err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, img, "livegate/livegate-agent:v1", mtime); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two archives of one image differ")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "image.tar")
	if err := os.WriteFile(path, a.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	fromTarball, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := fromTarball.Digest(); err != nil || got != want {
		t.Fatalf("docker-save side: digest %s (%v), want %s", got, err, want)
	}

	unpacked := filepath.Join(dir, "layout")
	tr := tar.NewReader(bytes.NewReader(a.Bytes()))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(mtime) {
			t.Errorf("%s: mtime %s", h.Name, h.ModTime)
		}
		p := filepath.Join(unpacked, h.Name)
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, _ := io.ReadAll(tr)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := layout.ImageIndexFromPath(unpacked)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 || m.Manifests[0].Digest != want || m.Manifests[0].Annotations[RefNameAnnotation] != "docker.io/livegate/livegate-agent:v1" {
		t.Fatalf("OCI index %+v, want one manifest %s", m, want)
	}
	fromLayout, err := idx.Image(want)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := fromLayout.Layers()
	if err != nil || len(layers) != 2 {
		t.Fatalf("OCI layout: %d layers, %v", len(layers), err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(io.Discard, rc)
		_ = rc.Close()
		if err != nil {
			t.Fatalf("layer blob: %v", err)
		}
	}
}
