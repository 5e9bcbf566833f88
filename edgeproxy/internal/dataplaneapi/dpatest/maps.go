package dpatest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
)

// ErrNotFound is a MapStore's answer for a missing map or key.
var ErrNotFound = errors.New("not found")

// MapEntry is one key and value of a runtime map.
type MapEntry struct{ Key, Value string }

// MapStore keeps runtime maps for the fake's maps_entries operations.
type MapStore interface {
	Show(ctx context.Context, m string) ([]MapEntry, error)
	Add(ctx context.Context, m, key, value string) error
	Set(ctx context.Context, m, key, value string) error
	Del(ctx context.Context, m, key string) error
	// Replace makes the map hold entries only, in one step (prepare, add @ver, commit).
	Replace(ctx context.Context, m string, entries []MapEntry) error
	// Sync writes the map to its file (force_sync).
	Sync(ctx context.Context, m string) error
}

// MemoryMaps is a MapStore in memory; Syncs counts force_sync writes per map.
type MemoryMaps struct {
	mu    sync.Mutex
	maps  map[string][]MapEntry
	syncs map[string]int
	down  bool
	dir   string
}

// NewMemoryMaps holds the named, empty maps.
func NewMemoryMaps(names ...string) *MemoryMaps {
	m := &MemoryMaps{maps: map[string][]MapEntry{}, syncs: map[string]int{}}
	for _, n := range names {
		m.maps[n] = nil
	}
	return m
}

// SetDown makes every call fail as HAProxy's runtime socket does when HAProxy is stopped.
func (mm *MemoryMaps) SetDown(down bool) {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	mm.down = down
}

// WriteFiles makes Sync keep <dir>/<name>.map as the real server's force_sync does (v2.9,
// configuration/map_sync.go): read and parse the file, sort it and the runtime entries, and when
// they differ truncate the file and write it again one line per write call, in place. The cost of
// a change then grows with the map as it does there.
func (mm *MemoryMaps) WriteFiles(dir string) {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	mm.dir = dir
}

// get returns map m; mm.mu is held.
func (mm *MemoryMaps) get(m string) ([]MapEntry, error) {
	if mm.down {
		return nil, fmt.Errorf("dial unix /run/haproxy/admin.sock: connect: %w", syscall.ECONNREFUSED)
	}
	l, ok := mm.maps[m]
	if !ok {
		return nil, fmt.Errorf("map %s: %w", m, ErrNotFound)
	}
	return l, nil
}

// Syncs is how many times map m was synced to its file.
func (mm *MemoryMaps) Syncs(m string) int {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	return mm.syncs[m]
}

func (mm *MemoryMaps) Show(_ context.Context, m string) ([]MapEntry, error) {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	l, err := mm.get(m)
	if err != nil {
		return nil, err
	}
	return append([]MapEntry(nil), l...), nil
}

// Add appends, as HAProxy's `add map` does, even when the key is already there.
func (mm *MemoryMaps) Add(_ context.Context, m, key, value string) error {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	l, err := mm.get(m)
	if err != nil {
		return err
	}
	mm.maps[m] = append(l, MapEntry{key, value})
	return nil
}

func (mm *MemoryMaps) Set(_ context.Context, m, key, value string) error {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	l, err := mm.get(m)
	if err != nil {
		return err
	}
	found := false
	for i := range l {
		if l[i].Key == key {
			l[i].Value, found = value, true
		}
	}
	if !found {
		return fmt.Errorf("key %s: %w", key, ErrNotFound)
	}
	return nil
}

func (mm *MemoryMaps) Del(_ context.Context, m, key string) error {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	l, err := mm.get(m)
	if err != nil {
		return err
	}
	out := l[:0]
	for _, e := range l {
		if e.Key != key {
			out = append(out, e)
		}
	}
	if len(out) == len(l) {
		return fmt.Errorf("key %s: %w", key, ErrNotFound)
	}
	mm.maps[m] = out
	return nil
}

func (mm *MemoryMaps) Replace(_ context.Context, m string, entries []MapEntry) error {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	if _, err := mm.get(m); err != nil {
		return err
	}
	mm.maps[m] = append([]MapEntry(nil), entries...)
	return nil
}

func (mm *MemoryMaps) Sync(_ context.Context, m string) error {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	l, err := mm.get(m)
	if err != nil {
		return err
	}
	mm.syncs[m]++
	if mm.dir == "" {
		return nil
	}
	return syncFile(filepath.Join(mm.dir, m+".map"), l)
}

func syncFile(path string, runtime []MapEntry) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	var file []MapEntry
	for line := range strings.SplitSeq(string(data), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), " "); ok {
			file = append(file, MapEntry{k, v})
		}
	}
	byKey := func(a, b MapEntry) int { return strings.Compare(a.Key, b.Key) }
	runtime = slices.Clone(runtime)
	slices.SortFunc(file, byKey)
	slices.SortFunc(runtime, byKey)
	if slices.Equal(file, runtime) {
		return nil
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	for _, e := range runtime {
		if _, err := f.WriteString(e.Key + " " + e.Value + "\n"); err != nil {
			return err
		}
	}
	return nil
}

// RuntimeMaps is a MapStore over a real HAProxy's runtime API, as the real Data Plane API is:
// a map name is resolved to <MapsDir>/<name>.map, the API's own rule when its maps directory is
// set, and Sync rewrites that file from `show map`.
type RuntimeMaps struct {
	Client  *haproxy.Client
	MapsDir string
}

func (r RuntimeMaps) path(name string) string {
	if filepath.Ext(name) != ".map" {
		name += ".map"
	}
	return filepath.Join(r.MapsDir, filepath.Base(name))
}

func (r RuntimeMaps) exec(ctx context.Context, words ...string) (string, error) {
	c, err := haproxy.NewCommand(words...)
	if err != nil {
		return "", err
	}
	out, err := r.Client.Exec(ctx, c)
	if err != nil {
		return "", err
	}
	switch {
	case strings.HasPrefix(out, "Unknown map identifier"):
		return "", fmt.Errorf("%s: %w", out, ErrNotFound)
	case strings.HasPrefix(out, "entry not found"), strings.HasPrefix(out, "Key not found"):
		return "", fmt.Errorf("%s: %w", out, ErrNotFound)
	}
	return out, nil
}

func (r RuntimeMaps) Show(ctx context.Context, m string) ([]MapEntry, error) {
	out, err := r.exec(ctx, "show", "map", r.path(m))
	if err != nil {
		return nil, err
	}
	var l []MapEntry
	for line := range strings.SplitSeq(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && strings.HasPrefix(f[0], "0x") {
			l = append(l, MapEntry{f[1], f[2]})
		}
	}
	return l, nil
}

func (r RuntimeMaps) answer(out string, err error) error {
	if err != nil {
		return err
	}
	if out != "" {
		return errors.New(out)
	}
	return nil
}

func (r RuntimeMaps) Add(ctx context.Context, m, key, value string) error {
	return r.answer(r.exec(ctx, "add", "map", r.path(m), key, value))
}

func (r RuntimeMaps) Set(ctx context.Context, m, key, value string) error {
	return r.answer(r.exec(ctx, "set", "map", r.path(m), key, value))
}

func (r RuntimeMaps) Del(ctx context.Context, m, key string) error {
	return r.answer(r.exec(ctx, "del", "map", r.path(m), key))
}

// Replace is the real server's way with a large payload: a new version of the map, filled,
// then committed.
func (r RuntimeMaps) Replace(ctx context.Context, m string, entries []MapEntry) error {
	out, err := r.exec(ctx, "prepare", "map", r.path(m))
	if err != nil {
		return err
	}
	ver, ok := strings.CutPrefix(strings.TrimSpace(out), "New version created: ")
	if !ok {
		return fmt.Errorf("prepare map: %s", out)
	}
	for _, e := range entries {
		if err := r.answer(r.exec(ctx, "add", "map", "@"+ver, r.path(m), e.Key, e.Value)); err != nil {
			return err
		}
	}
	return r.answer(r.exec(ctx, "commit", "map", "@"+ver, r.path(m)))
}

func (r RuntimeMaps) Sync(ctx context.Context, m string) error {
	l, err := r.Show(ctx, m)
	if err != nil {
		return err
	}
	entries := map[string]string{}
	for _, e := range l {
		if _, dup := entries[e.Key]; !dup {
			entries[e.Key] = e.Value
		}
	}
	return haproxy.WriteMapFile(r.path(m), entries)
}
