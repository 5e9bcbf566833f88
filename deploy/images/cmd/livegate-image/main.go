// Command livegate-image builds the OCI image archive of livegate-agent or livegate-edgeproxy
// from a built binary and the build host's Debian packages, without a container engine. `make
// images` runs it; docs/operations.md says how to load, push and pin what it writes.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/livegate/livegate/deploy/images/internal/assemble"
	"github.com/livegate/livegate/deploy/images/internal/debian"
	"github.com/livegate/livegate/deploy/images/internal/layer"
	"github.com/livegate/livegate/deploy/images/internal/ociarchive"
)

// tagPattern is what a registry accepts as a tag.
var tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// errUsage is a command line the flag package has already explained.
var errUsage = errors.New("usage")

func main() {
	err := run(os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, errUsage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintf(os.Stderr, "livegate-image: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("livegate-image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	names := slices.Sorted(maps.Keys(assemble.Specs))
	name := fs.String("image", "", "image to build: "+strings.Join(names, ", "))
	binary := fs.String("binary", "", "the image's linux binary (built with CGO_ENABLED=0 -trimpath)")
	version := fs.String("version", "", "version the binary links in: the archive's tag and org.opencontainers.image.version")
	revision := fs.String("revision", "", "VCS revision (org.opencontainers.image.revision)")
	source := fs.String("source", "", "source repository URL (org.opencontainers.image.source)")
	created := fs.String("created", os.Getenv("SOURCE_DATE_EPOCH"), "creation time and every file's mtime, Unix seconds (default $SOURCE_DATE_EPOCH)")
	arch := fs.String("arch", runtime.GOARCH, "architecture of the binary and of the host's Debian packages")
	cache := fs.String("deb-cache", "", "directory of downloaded Debian packages, kept between builds")
	out := fs.String("out", "", "archive to write")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	note := func(msg string) { fmt.Fprintln(stderr, "livegate-image: note:", msg) }
	spec, ok := assemble.Specs[*name]
	if !ok {
		return fmt.Errorf("--image %q: want one of %s", *name, strings.Join(names, ", "))
	}
	if !tagPattern.MatchString(*version) {
		return fmt.Errorf("--version %q: not a valid image tag (letters, digits, _ . -; at most 128)", *version)
	}
	secs, err := strconv.ParseInt(*created, 10, 64)
	if err != nil || secs < 0 {
		return fmt.Errorf("--created %q: want Unix seconds (e.g. git log -1 --format=%%ct)", *created)
	}
	if *out == "" || *cache == "" {
		return fmt.Errorf("--out and --deb-cache are required")
	}
	bin, err := os.ReadFile(*binary)
	if err != nil {
		return fmt.Errorf("--binary: %w", err)
	}
	certs, err := caCertificates(*cache, note)
	if err != nil {
		return fmt.Errorf("CA certificates: %w", err)
	}
	img, err := assemble.Build(spec, assemble.Inputs{
		Binary: bin, Version: *version, Revision: *revision, Source: *source,
		Created: time.Unix(secs, 0), Arch: *arch, CACertificates: certs,
		Packages: func(tree *layer.Tree, roots []string) ([]debian.Package, error) {
			return unpack(tree, roots, *cache, note)
		},
	})
	if err != nil {
		return err
	}
	ref := spec.Repo + ":" + *version
	if err := writeArchive(*out, img, ref, time.Unix(secs, 0)); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	size, unpacked, err := sizes(img)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %s %s, %.1f MiB compressed, %.1f MiB unpacked\n", *out, ref, digest, mib(size), mib(unpacked))
	return nil
}

// unpack adds roots and their dependencies, as the host has them installed, to tree.
func unpack(tree *layer.Tree, roots []string, cache string, note func(string)) ([]debian.Package, error) {
	pkgs, err := debian.Closure(roots, assemble.SkipPackages, debian.Installed)
	if err != nil {
		return nil, err
	}
	for i, p := range pkgs {
		deb, got, err := debian.Download(cache, p, note)
		if err != nil {
			return nil, err
		}
		pkgs[i] = got
		if err := debian.Extract(tree, deb, assemble.PrunePaths); err != nil {
			return nil, err
		}
	}
	return pkgs, nil
}

// caCertificates is the bundle of the host's version of ca-certificates.
func caCertificates(cache string, note func(string)) ([]byte, error) {
	p, ok, err := debian.Installed("ca-certificates")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("package ca-certificates is not installed (make deps installs it)")
	}
	deb, _, err := debian.Download(cache, p, note)
	if err != nil {
		return nil, err
	}
	tree := layer.New()
	if err := debian.Extract(tree, deb, nil); err != nil {
		return nil, err
	}
	return debian.CABundle(tree.Paths(), func(path string) []byte { e, _ := tree.Get(path); return e.Data })
}

// writeArchive writes the archive beside out and renames it into place, so that out is always
// a whole archive.
func writeArchive(out string, img v1.Image, ref string, mtime time.Time) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(out), ".livegate-image-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := ociarchive.Write(f, img, ref, mtime); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", out, err)
	}
	if err := f.Chmod(0o644); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), out)
}

// sizes are the image's compressed size (what a registry stores and a node pulls: layers,
// config, manifest) and the size of its unpacked layers.
func sizes(img v1.Image) (compressed, unpacked int64, err error) {
	m, err := img.Manifest()
	if err != nil {
		return 0, 0, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return 0, 0, err
	}
	compressed = m.Config.Size + int64(len(raw))
	for _, l := range m.Layers {
		compressed += l.Size
	}
	layers, err := img.Layers()
	if err != nil {
		return 0, 0, err
	}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return 0, 0, err
		}
		n, err := io.Copy(io.Discard, rc)
		_ = rc.Close()
		if err != nil {
			return 0, 0, err
		}
		unpacked += n
	}
	return compressed, unpacked, nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
