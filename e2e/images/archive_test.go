package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// image is an archive `make images` wrote, read with the standard library only: what any loader
// sees, independent of the code that wrote it.
type image struct {
	name    string
	tag     string // repository:tag of manifest.json
	digest  string // of the manifest, from index.json
	config  imageConfig
	layers  []layerBlob
	size    int64 // compressed: layers, config, manifest
	entries map[string]*tar.Header
	// root is the file system the layers unpack to.
	root string
}

type layerBlob struct {
	digest string
	data   []byte // gzip
}

type imageConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		Entrypoint   []string            `json:"Entrypoint"`
		Cmd          []string            `json:"Cmd"`
		User         string              `json:"User"`
		Env          []string            `json:"Env"`
		ExposedPorts map[string]struct{} `json:"ExposedPorts"`
		Labels       map[string]string   `json:"Labels"`
	} `json:"config"`
	RootFS struct {
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
}

// readImage reads the archive at p and checks that its two descriptions (the OCI layout's
// index.json and docker-save's manifest.json) name the same blobs, each matching its digest.
func readImage(t *testing.T, p string) *image {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatalf("%v (run `make images`)", err)
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if h.Typeflag == tar.TypeReg {
			if files[h.Name], err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
	blob := func(digest string) []byte {
		t.Helper()
		hexDigest, ok := strings.CutPrefix(digest, "sha256:")
		b, found := files["blobs/sha256/"+hexDigest]
		if !ok || !found {
			t.Fatalf("%s: no blob %s", p, digest)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != hexDigest {
			t.Fatalf("%s: blob %s has digest sha256:%x", p, digest, sum)
		}
		return b
	}
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Fatalf("%s: oci-layout %q", p, files["oci-layout"])
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	unmarshal(t, files["index.json"], &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("%s: index.json has %d manifests, want 1", p, len(index.Manifests))
	}
	var manifest struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	unmarshal(t, blob(index.Manifests[0].Digest), &manifest)
	var saved []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	unmarshal(t, files["manifest.json"], &saved)
	if len(saved) != 1 || len(saved[0].RepoTags) != 1 || saved[0].Config != blobPath(manifest.Config.Digest) || len(saved[0].Layers) != len(manifest.Layers) {
		t.Fatalf("%s: manifest.json %+v does not name the OCI manifest's blobs %+v", p, saved, manifest)
	}
	img := &image{name: strings.TrimSuffix(filepath.Base(p), ".tar"), tag: saved[0].RepoTags[0], digest: index.Manifests[0].Digest,
		size: manifest.Config.Size + int64(index.Manifests[0].Size)}
	if ref := index.Manifests[0].Annotations["org.opencontainers.image.ref.name"]; ref != "docker.io/"+img.tag {
		t.Errorf("%s: index names the image %q, manifest.json %q", p, ref, img.tag)
	}
	unmarshal(t, blob(manifest.Config.Digest), &img.config)
	for i, l := range manifest.Layers {
		if saved[0].Layers[i] != blobPath(l.Digest) {
			t.Fatalf("%s: layer %d is %s in manifest.json, %s in the OCI manifest", p, i, saved[0].Layers[i], l.Digest)
		}
		img.layers = append(img.layers, layerBlob{digest: l.Digest, data: blob(l.Digest)})
		img.size += l.Size
	}
	if len(img.config.RootFS.DiffIDs) != len(img.layers) {
		t.Fatalf("%s: %d diff_ids for %d layers", p, len(img.config.RootFS.DiffIDs), len(img.layers))
	}
	return img
}

func blobPath(digest string) string { return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:") }

func unmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
}

// scan is called with each regular file of each layer.
type scan func(name string, h *tar.Header, data []byte)

// unpack extracts the layers in order into the directory root, as a runtime prepares a container's
// root file system (owners, modes and links as the layers say), calling check on every file. The
// images have no whiteouts: one in a layer is an error.
func (img *image) unpack(t *testing.T, root string, check scan) {
	t.Helper()
	img.root = root
	img.entries = map[string]*tar.Header{}
	for i, l := range img.layers {
		zr, err := gzip.NewReader(bytes.NewReader(l.data))
		if err != nil {
			t.Fatalf("%s layer %d: %v", img.name, i, err)
		}
		uncompressed, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("%s layer %d: %v", img.name, i, err)
		}
		if sum := sha256.Sum256(uncompressed); "sha256:"+hex.EncodeToString(sum[:]) != img.config.RootFS.DiffIDs[i] {
			t.Fatalf("%s layer %d: diff_id %s, content sha256:%x", img.name, i, img.config.RootFS.DiffIDs[i], sum)
		}
		tr := tar.NewReader(bytes.NewReader(uncompressed))
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s layer %d: %v", img.name, i, err)
			}
			name := path.Clean("/" + h.Name)
			if strings.HasPrefix(path.Base(name), ".wh.") {
				t.Fatalf("%s layer %d: whiteout %s", img.name, i, name)
			}
			img.entries[name] = h
			var data []byte
			if h.Typeflag == tar.TypeReg {
				if data, err = io.ReadAll(tr); err != nil {
					t.Fatal(err)
				}
			}
			if check != nil {
				check(name, h, data)
			}
			if err := extract(filepath.Join(img.root, name), h, data); err != nil {
				t.Fatalf("%s layer %d: %v", img.name, i, err)
			}
		}
	}
}

func extract(dst string, h *tar.Header, data []byte) error {
	mode := os.FileMode(h.Mode).Perm()
	switch h.Typeflag {
	case tar.TypeDir:
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
	case tar.TypeReg:
		if err := os.WriteFile(dst, data, 0o600); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := os.Symlink(h.Linkname, dst); err != nil {
			return err
		}
		return os.Lchown(dst, h.Uid, h.Gid)
	default:
		return fmt.Errorf("%s: entry type %q", h.Name, h.Typeflag)
	}
	if err := os.Lchown(dst, h.Uid, h.Gid); err != nil {
		return err
	}
	// After chown, which clears setuid bits; the sticky bit of /tmp counts too.
	if h.Mode&0o1000 != 0 {
		mode |= os.ModeSticky
	}
	if h.Mode&0o4000 != 0 {
		mode |= os.ModeSetuid
	}
	if h.Mode&0o2000 != 0 {
		mode |= os.ModeSetgid
	}
	return os.Chmod(dst, mode)
}
