package assemble

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/livegate/livegate/deploy/images/internal/debian"
	"github.com/livegate/livegate/deploy/images/internal/layer"
)

// Labels the images carry (the OCI annotation keys).
const (
	LabelTitle       = "org.opencontainers.image.title"
	LabelDescription = "org.opencontainers.image.description"
	LabelVersion     = "org.opencontainers.image.version"
	LabelRevision    = "org.opencontainers.image.revision"
	LabelSource      = "org.opencontainers.image.source"
	LabelCreated     = "org.opencontainers.image.created"
)

// Path is the search path of the images' processes (the edge runs iptables-save and conntrack by name).
const Path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Inputs are what a build takes besides its Spec; the same inputs make the same image, byte for byte.
type Inputs struct {
	// Binary is the linux program for Spec.Binary.
	Binary                    []byte
	Version, Revision, Source string
	// Created is every file's modification time and the image's creation time.
	Created time.Time
	// Arch is the image's architecture, as Go names it (amd64, arm64); the packages' must match.
	Arch string
	// CACertificates is the bundle for /etc/ssl/certs/ca-certificates.crt.
	CACertificates []byte
	// Packages adds the files of the spec's packages, dependencies included, to a tree and
	// returns what it added; unused for a spec without packages.
	Packages func(tree *layer.Tree, roots []string) ([]debian.Package, error)
}

// passwd and group name root and the unprivileged user 65532 ("nonroot", as distroless images
// call it), so that tools inside the image show names rather than numbers.
const (
	passwd = "root:x:0:0:root:/root:/usr/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin\n"
	group  = "root:x:0:\nnonroot:x:65532:\n"
)

// Build assembles the image of s: a base layer (users, CA certificates, /tmp) that every spec
// shares, the packages' layer when s has packages, and the binary's layer.
func Build(s Spec, in Inputs) (v1.Image, error) {
	if len(in.Binary) == 0 {
		return nil, fmt.Errorf("%s: no binary", s.Name)
	}
	if in.Version == "" {
		return nil, fmt.Errorf("%s: no version", s.Name)
	}
	base := layer.New()
	for _, e := range []layer.Entry{
		{Path: "/etc/passwd", Type: tar.TypeReg, Mode: 0o644, Data: []byte(passwd)},
		{Path: "/etc/group", Type: tar.TypeReg, Mode: 0o644, Data: []byte(group)},
		{Path: "/etc/ssl/certs/ca-certificates.crt", Type: tar.TypeReg, Mode: 0o644, Data: in.CACertificates},
		{Path: "/tmp", Type: tar.TypeDir, Mode: 0o1777},
	} {
		if err := base.Add(e); err != nil {
			return nil, err
		}
	}
	type step struct {
		tree *layer.Tree
		what string
	}
	steps := []step{{base, "users, CA certificates (Debian ca-certificates), /tmp"}}
	if len(s.Packages) > 0 {
		tree, pkgs, err := packageLayer(s, in)
		if err != nil {
			return nil, err
		}
		names := make([]string, len(pkgs))
		for i, p := range pkgs {
			names[i] = p.String()
		}
		steps = append(steps, step{tree, "Debian packages " + strings.Join(names, " ")})
	}
	bin := layer.New()
	if err := bin.Add(layer.Entry{Path: s.Binary, Type: tar.TypeReg, Mode: 0o755, Data: in.Binary}); err != nil {
		return nil, err
	}
	steps = append(steps, step{bin, s.Binary + " " + in.Version})

	created := v1.Time{Time: in.Created.UTC().Truncate(time.Second)}
	img := empty.Image
	for _, st := range steps {
		b, err := st.tree.Tar(in.Created)
		if err != nil {
			return nil, fmt.Errorf("%s layer %q: %w", s.Name, st.what, err)
		}
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
			tarball.WithCompressionLevel(gzip.BestCompression))
		if err != nil {
			return nil, err
		}
		if img, err = mutate.Append(img, mutate.Addendum{Layer: l, History: v1.History{Created: created, CreatedBy: "livegate-image: " + st.what}}); err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", in.Arch, created
	cf.Config.Entrypoint = []string{s.Binary}
	cf.Config.User = s.User
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{Path}
	cf.Config.ExposedPorts = map[string]struct{}{}
	for _, p := range s.Ports {
		cf.Config.ExposedPorts[p] = struct{}{}
	}
	cf.Config.Labels = map[string]string{
		LabelTitle:       s.Name,
		LabelDescription: s.Description,
		LabelVersion:     in.Version,
		LabelRevision:    in.Revision,
		LabelSource:      in.Source,
		LabelCreated:     created.Format(time.RFC3339),
	}
	return mutate.ConfigFile(img, cf)
}

// packageLayer unpacks the spec's packages and makes what their maintainer scripts would have:
// the symlinks, the directories, and a dpkg status entry per package (/var/lib/dpkg/status.d,
// as distroless images have) so that scanners know what the image holds.
func packageLayer(s Spec, in Inputs) (*layer.Tree, []debian.Package, error) {
	if in.Packages == nil {
		return nil, nil, fmt.Errorf("%s: needs Debian packages, and the build has no source of them", s.Name)
	}
	tree := layer.New()
	pkgs, err := in.Packages(tree, s.Packages)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", s.Name, err)
	}
	for _, p := range pkgs {
		if p.Arch != "all" && p.Arch != in.Arch {
			return nil, nil, fmt.Errorf("%s: package %s is for %s, the image for %s", s.Name, p, p.Arch, in.Arch)
		}
		if err := tree.Add(layer.Entry{Path: "/var/lib/dpkg/status.d/" + p.Name, Type: tar.TypeReg, Mode: 0o644, Data: []byte(p.Status())}); err != nil {
			return nil, nil, err
		}
	}
	for _, link := range slices.Sorted(maps.Keys(s.Symlinks)) {
		if err := tree.Add(layer.Entry{Path: link, Type: tar.TypeSymlink, Mode: 0o777, Linkname: s.Symlinks[link]}); err != nil {
			return nil, nil, err
		}
	}
	for _, dir := range slices.Sorted(maps.Keys(s.Dirs)) {
		if err := tree.Add(layer.Entry{Path: dir, Type: tar.TypeDir, Mode: s.Dirs[dir]}); err != nil {
			return nil, nil, err
		}
	}
	return tree, pkgs, nil
}
