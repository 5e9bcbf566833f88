package haproxy

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/livegate/livegate/edgeproxy/internal/atomicfile"
)

// WriteMapFile replaces the map file at path with entries, atomically (a temporary file in the
// same directory, synced, then renamed over it): HAProxy loads this file when it starts, so a
// restart or reload comes up with the current routes and never with half a file.
func WriteMapFile(path string, entries map[string]string) error {
	var b strings.Builder
	b.WriteString("# livegate session map: session id -> signaling backend. Written by livegate-edgeproxy.\n")
	for _, k := range slices.Sorted(maps.Keys(entries)) {
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
	return atomicfile.Write(path, []byte(b.String()), 0o644)
}
