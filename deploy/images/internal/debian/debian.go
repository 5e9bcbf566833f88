// Package debian takes Debian packages into an image: which packages a set of programs needs
// (the dependency closure, as installed on the build host), the packages themselves (apt-get
// download, cached) and their files (dpkg-deb), without installing anything or running a
// maintainer script.
package debian

import (
	"fmt"
	"sort"
	"strings"
)

// Package is one installed binary package.
type Package struct {
	Name, Version, Arch string
	// Source and SourceVersion name the source package it was built from.
	Source, SourceVersion string
	// Depends are the Pre-Depends and Depends fields, parsed.
	Depends [][]string
}

// String is name=version, as apt-get takes it.
func (p Package) String() string { return p.Name + "=" + p.Version }

// Status is p's entry in the dpkg status format, the fields image scanners read.
func (p Package) Status() string {
	return fmt.Sprintf("Package: %s\nStatus: install ok installed\nVersion: %s\nArchitecture: %s\nSource: %s (%s)\n",
		p.Name, p.Version, p.Arch, p.Source, p.SourceVersion)
}

// ParseDepends parses a Depends field ("libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0") into
// groups of alternatives, names only: versions and architecture qualifiers (":any") dropped.
func ParseDepends(field string) [][]string {
	var groups [][]string
	for _, group := range strings.Split(field, ",") {
		var alts []string
		for _, alt := range strings.Split(group, "|") {
			name := strings.TrimSpace(alt)
			if i := strings.IndexAny(name, " ([<"); i >= 0 {
				name = name[:i]
			}
			name, _, _ = strings.Cut(name, ":")
			if name != "" {
				alts = append(alts, name)
			}
		}
		if len(alts) > 0 {
			groups = append(groups, alts)
		}
	}
	return groups
}

// Lookup returns the installed package name, or ok false when it is not installed.
type Lookup func(name string) (p Package, ok bool, err error)

// Closure is roots and everything they depend on, sorted by name: of each group of alternatives
// the first one installed, except the packages of skip (what only maintainer scripts use, such as
// adduser or debconf), which are left out with all they alone depend on.
func Closure(roots []string, skip map[string]bool, lookup Lookup) ([]Package, error) {
	seen := map[string]Package{}
	queue := append([]string(nil), roots...)
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		if _, done := seen[name]; done || skip[name] {
			continue
		}
		p, ok, err := lookup(name)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("package %s is not installed on this host (make deps installs what the images take)", name)
		}
		seen[name] = p
		for _, group := range p.Depends {
			dep, err := pick(group, skip, lookup)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if dep != "" {
				queue = append(queue, dep)
			}
		}
	}
	out := make([]Package, 0, len(seen))
	for _, p := range seen {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// pick is the alternative of group to take: "" when the group is satisfied by a skipped package.
func pick(group []string, skip map[string]bool, lookup Lookup) (string, error) {
	for _, alt := range group {
		if skip[alt] {
			return "", nil
		}
		if _, ok, err := lookup(alt); err != nil {
			return "", err
		} else if ok {
			return alt, nil
		}
	}
	return "", fmt.Errorf("none of %s is installed", strings.Join(group, " | "))
}

// CABundlePrefix is where ca-certificates keeps the Mozilla certificates.
const CABundlePrefix = "/usr/share/ca-certificates/mozilla/"

// CABundle concatenates the certificates a tree of the ca-certificates package holds, in path
// order, as update-ca-certificates makes /etc/ssl/certs/ca-certificates.crt.
func CABundle(paths []string, data func(path string) []byte) ([]byte, error) {
	var out []byte
	for _, p := range paths {
		if !strings.HasPrefix(p, CABundlePrefix) || !strings.HasSuffix(p, ".crt") {
			continue
		}
		b := data(p)
		out = append(out, b...)
		if len(b) > 0 && b[len(b)-1] != '\n' {
			out = append(out, '\n')
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no certificates under %s", CABundlePrefix)
	}
	return out, nil
}

// ParseCandidate is the Candidate version of `apt-cache policy` output ("" for none).
func ParseCandidate(policy string) string {
	for _, line := range strings.Split(policy, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Candidate:"); ok {
			if v = strings.TrimSpace(v); v != "(none)" {
				return v
			}
		}
	}
	return ""
}
