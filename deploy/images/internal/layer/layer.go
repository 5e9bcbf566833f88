// Package layer builds image layers whose bytes depend only on what they hold: entries sorted by
// path, one modification time for all, owners by number only, no host metadata (no user or group
// names, access times, extended attributes or device numbers).
package layer

import (
	"archive/tar"
	"bytes"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"
)

// Entry is one file system object of a layer.
type Entry struct {
	// Path is absolute inside the image ("/usr/sbin/haproxy").
	Path string
	// Type is tar.TypeReg, tar.TypeDir or tar.TypeSymlink; Add turns a hard link (tar.TypeLink)
	// into a copy of its target.
	Type     byte
	Mode     int64
	UID, GID int
	Linkname string
	Data     []byte
}

// Tree is the file system of one layer.
type Tree struct {
	entries map[string]Entry
}

// New returns an empty tree.
func New() *Tree { return &Tree{entries: map[string]Entry{}} }

// Add puts e into the tree, with the directories above it (root-owned, 0755) unless present. A
// file replaces a file at the same path (as a later package's does); a directory keeps the first
// one's owner and mode; a file where a directory is, or the reverse, is an error.
func (t *Tree) Add(e Entry) error {
	p, err := clean(e.Path)
	if err != nil {
		return err
	}
	e.Path = p
	switch e.Type {
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink:
	case tar.TypeLink:
		target, err := clean(e.Linkname)
		if err != nil {
			return fmt.Errorf("hard link %s: %w", p, err)
		}
		src, ok := t.entries[target]
		if !ok || src.Type != tar.TypeReg {
			return fmt.Errorf("hard link %s: target %s is not a file of the layer", p, target)
		}
		e.Type, e.Linkname, e.Data, e.Mode, e.UID, e.GID = tar.TypeReg, "", src.Data, src.Mode, src.UID, src.GID
	default:
		return fmt.Errorf("%s: tar type %q not supported in a layer", p, e.Type)
	}
	if p == "/" {
		return nil
	}
	if err := t.parents(p); err != nil {
		return err
	}
	if old, ok := t.entries[p]; ok {
		if (old.Type == tar.TypeDir) != (e.Type == tar.TypeDir) {
			return fmt.Errorf("%s: a directory and a file at the same path", p)
		}
		if old.Type == tar.TypeDir {
			return nil
		}
	}
	t.entries[p] = e
	return nil
}

func (t *Tree) parents(p string) error {
	for dir := path.Dir(p); dir != "/"; dir = path.Dir(dir) {
		if old, ok := t.entries[dir]; ok {
			if old.Type != tar.TypeDir {
				return fmt.Errorf("%s: parent %s is not a directory", p, dir)
			}
			continue
		}
		t.entries[dir] = Entry{Path: dir, Type: tar.TypeDir, Mode: 0o755}
	}
	return nil
}

// Prune removes every entry at or below each of the paths.
func (t *Tree) Prune(paths ...string) {
	for _, p := range paths {
		for name := range t.entries {
			if name == p || strings.HasPrefix(name, p+"/") {
				delete(t.entries, name)
			}
		}
	}
}

// Get returns the entry at p.
func (t *Tree) Get(p string) (Entry, bool) {
	e, ok := t.entries[p]
	return e, ok
}

// Paths lists the tree's paths in layer order.
func (t *Tree) Paths() []string {
	names := make([]string, 0, len(t.entries))
	for name := range t.entries {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// Tar is the layer: every entry in path order, each with modification time mtime.
func (t *Tree) Tar(mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	mtime = mtime.UTC().Truncate(time.Second)
	for _, name := range t.Paths() {
		e := t.entries[name]
		h := &tar.Header{
			Typeflag: e.Type,
			Name:     strings.TrimPrefix(name, "/"),
			Mode:     e.Mode,
			Uid:      e.UID,
			Gid:      e.GID,
			Linkname: e.Linkname,
			ModTime:  mtime,
			Format:   tar.FormatPAX,
		}
		switch e.Type {
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeReg:
			h.Size = int64(len(e.Data))
		}
		if err := w.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", name, err)
		}
		if e.Type == tar.TypeReg {
			if _, err := w.Write(e.Data); err != nil {
				return nil, fmt.Errorf("layer entry %s: %w", name, err)
			}
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func clean(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		p = "/" + strings.TrimPrefix(p, "./")
	}
	c := path.Clean(p)
	if c != strings.TrimSuffix(p, "/") && p != "/" {
		return "", fmt.Errorf("path %q is not clean", p)
	}
	return c, nil
}
