package haproxy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// WriteMapFile replaces the map file at path with entries, atomically (a temporary file in the
// same directory, synced, then renamed over it): HAProxy loads this file when it starts, so a
// restart or reload comes up with the current routes and never with half a file.
func WriteMapFile(path string, entries map[string]string) error {
	var b strings.Builder
	b.WriteString("# livegate session map: session id -> signaling backend. Written by livegate-edgeproxy.\n")
	for _, k := range sortedKeys(entries) {
		if err := checkWord(k); err != nil {
			return fmt.Errorf("map file %s: key: %w", path, err)
		}
		if err := checkWord(entries[k]); err != nil {
			return fmt.Errorf("map file %s: value of %s: %w", path, k, err)
		}
		b.WriteString(k)
		b.WriteByte(' ')
		b.WriteString(entries[k])
		b.WriteByte('\n')
	}
	return WriteFileAtomic(path, []byte(b.String()), 0o644)
}

// WriteFileAtomic writes data to path through a temporary file and a rename.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }()
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
