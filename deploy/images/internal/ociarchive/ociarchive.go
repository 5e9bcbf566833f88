// Package ociarchive writes an image as one tar that every usual loader reads: an OCI image layout
// (oci-layout, index.json, blobs/sha256/…) for OCI tools (podman load, skopeo oci-archive:), and
// beside it the manifest.json of a docker-save archive, naming the same blobs, for docker load and
// crane push. It is the layout `docker save` writes since Docker 25.
package ociarchive

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Annotations of the index entry that name the image.
const (
	RefNameAnnotation        = "org.opencontainers.image.ref.name"
	ContainerdNameAnnotation = "io.containerd.image.name"
)

// DockerManifest is one entry of a docker-save manifest.json.
type DockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// Write writes img, named ref ("livegate/livegate-agent:v0.1.0"), to w. Every entry has
// modification time mtime and the blobs come in digest order, so the archive's bytes depend on
// the image alone.
func Write(w io.Writer, img v1.Image, ref string, mtime time.Time) error {
	blobs := map[string][]byte{}
	add := func(h v1.Hash, b []byte) string {
		name := "blobs/" + h.Algorithm + "/" + h.Hex
		blobs[name] = b
		return name
	}
	rawManifest, err := img.RawManifest()
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	add(digest, rawManifest)
	rawConfig, err := img.RawConfigFile()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return err
	}
	dm := DockerManifest{Config: add(cfgName, rawConfig), RepoTags: []string{ref}}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for i, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		b, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		dm.Layers = append(dm.Layers, add(d, b))
	}
	mediaType, err := img.MediaType()
	if err != nil {
		return err
	}
	index := v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType:   mediaType,
			Size:        int64(len(rawManifest)),
			Digest:      digest,
			Annotations: map[string]string{RefNameAnnotation: "docker.io/" + ref, ContainerdNameAnnotation: "docker.io/" + ref},
		}},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return err
	}
	manifestJSON, err := json.Marshal([]DockerManifest{dm})
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	file := func(name string, b []byte) error {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: mtime, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: mtime, Format: tar.FormatPAX})
	}
	if err := file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := dir("blobs/"); err != nil {
		return err
	}
	if err := dir("blobs/sha256/"); err != nil {
		return err
	}
	names := make([]string, 0, len(blobs))
	for name := range blobs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := file(name, blobs[name]); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	if err := file("index.json", indexJSON); err != nil {
		return err
	}
	if err := file("manifest.json", manifestJSON); err != nil {
		return err
	}
	return tw.Close()
}
