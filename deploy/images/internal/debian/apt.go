package debian

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/livegate/livegate/deploy/images/internal/layer"
)

// Installed looks name up in the host's dpkg database (dpkg-query): the version the host runs,
// and so the one its tests ran with.
func Installed(name string) (Package, bool, error) {
	cmd := exec.Command("dpkg-query", "-W", "-f", `${db:Status-Abbrev}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\t${Pre-Depends}\t${Depends}\n`, name)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return Package{}, false, nil
	}
	if err != nil {
		return Package{}, false, fmt.Errorf("dpkg-query %s: %w: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	arch, err := nativeArch()
	if err != nil {
		return Package{}, false, err
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 7 || strings.TrimSpace(f[0]) != "ii" || (f[2] != arch && f[2] != "all") {
			continue
		}
		return Package{Name: name, Version: f[1], Arch: f[2], Source: f[3], SourceVersion: f[4], Depends: ParseDepends(f[5] + "," + f[6])}, true, nil
	}
	return Package{}, false, nil
}

func nativeArch() (string, error) {
	out, err := exec.Command("dpkg", "--print-architecture").Output()
	if err != nil {
		return "", fmt.Errorf("dpkg --print-architecture: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// FileName is the name apt-get download gives p's package file.
func FileName(p Package) string {
	return fmt.Sprintf("%s_%s_%s.deb", p.Name, strings.ReplaceAll(p.Version, ":", "%3a"), p.Arch)
}

// Download returns the path of p's package file in cache, fetching it with apt-get download
// (which checks it against the archive's signed index) unless an earlier build did, and the
// package it holds: p, or the archive's candidate version when the archive no longer has p's
// (a security update the host has not installed yet), which note is told about.
func Download(cache string, p Package, note func(string)) (string, Package, error) {
	if dst := filepath.Join(cache, FileName(p)); exists(dst) {
		return dst, p, nil
	}
	err := download(cache, p)
	if err == nil {
		return filepath.Join(cache, FileName(p)), p, nil
	}
	candidate, cerr := candidateVersion(p.Name + ":" + p.Arch)
	if cerr != nil || candidate == "" || candidate == p.Version {
		return "", p, err
	}
	note(fmt.Sprintf("%s: the archive no longer has the installed %s; taking its candidate %s", p.Name, p.Version, candidate))
	p.Version = candidate
	if dst := filepath.Join(cache, FileName(p)); exists(dst) {
		return dst, p, nil
	}
	if err := download(cache, p); err != nil {
		return "", p, err
	}
	return filepath.Join(cache, FileName(p)), p, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func download(cache string, p Package) error {
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return fmt.Errorf("package cache: %w", err)
	}
	// A directory of its own, renamed into place: a concurrent or interrupted build never sees
	// half a file.
	tmp, err := os.MkdirTemp(cache, ".download-")
	if err != nil {
		return fmt.Errorf("package cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	// apt's download user must be able to write there.
	if err := os.Chmod(tmp, 0o777); err != nil {
		return err
	}
	cmd := exec.Command("apt-get", "download", "-q", p.Name+":"+p.Arch+"="+p.Version)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get download %s: %w: %s (is the apt index current? apt-get update)", p, err, strings.TrimSpace(string(out)))
	}
	if err := os.Rename(filepath.Join(tmp, FileName(p)), filepath.Join(cache, FileName(p))); err != nil {
		return fmt.Errorf("apt-get download %s: %w", p, err)
	}
	return nil
}

// candidateVersion is the version apt would install of name ("" when none).
func candidateVersion(name string) (string, error) {
	out, err := exec.Command("apt-cache", "policy", name).Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache policy %s: %w", name, err)
	}
	return ParseCandidate(string(out)), nil
}

// Extract adds the files of the package file deb to tree (dpkg-deb --fsys-tarfile: the data
// as dpkg would unpack it, owners and modes included), leaving out what is at or below a path of
// prune.
func Extract(tree *layer.Tree, deb string, prune []string) error {
	cmd := exec.Command("dpkg-deb", "--fsys-tarfile", deb)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("dpkg-deb %s: %w", deb, err)
	}
	readErr := addTar(tree, out, prune)
	_, _ = io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w: %s", deb, err, strings.TrimSpace(stderr.String()))
	}
	if readErr != nil {
		return fmt.Errorf("%s: %w", filepath.Base(deb), readErr)
	}
	return nil
}

func addTar(tree *layer.Tree, r io.Reader, prune []string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := "/" + strings.TrimPrefix(strings.TrimPrefix(h.Name, "./"), "/")
		if pruned(name, prune) {
			continue
		}
		e := layer.Entry{Path: name, Type: h.Typeflag, Mode: h.Mode, UID: h.Uid, GID: h.Gid, Linkname: h.Linkname}
		// Old archives mark regular files with TypeRegA.
		if e.Type == tar.TypeRegA {
			e.Type = tar.TypeReg
		}
		if e.Type == tar.TypeReg {
			if e.Data, err = io.ReadAll(tr); err != nil {
				return err
			}
		}
		if err := tree.Add(e); err != nil {
			return err
		}
	}
}

func pruned(name string, prune []string) bool {
	for _, p := range prune {
		if name == p || strings.HasPrefix(name, p+"/") {
			return true
		}
	}
	return false
}
