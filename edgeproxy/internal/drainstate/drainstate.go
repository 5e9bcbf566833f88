// Package drainstate keeps an edge's drain state in a file of its state directory, so that a
// drained edge that restarts (an upgrade, a crash) comes back draining, with the same deadline.
package drainstate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/atomicfile"
	"github.com/livegate/livegate/edgeproxy/internal/placement"
)

// FileName is the state file's name in the edge's --state-dir.
const FileName = "drain.json"

// Store is the drain state and its file.
type Store struct {
	path string
	now  func() time.Time

	mu       sync.Mutex
	d        placement.Drain
	onChange func()
}

// Open reads the state file at path; a missing file is an edge that is not draining.
func Open(path string, now func() time.Time) (*Store, error) {
	s := &Store{path: path, now: now}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("read drain state %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &s.d); err != nil {
		return nil, fmt.Errorf("read drain state %s: %w (remove the file to undrain)", path, err)
	}
	return s, nil
}

// OnChange sets what is called after each change (the reconcile loop's wake-up).
func (s *Store) OnChange(f func()) {
	s.mu.Lock()
	s.onChange = f
	s.mu.Unlock()
}

// Get is the drain state now.
func (s *Store) Get() placement.Drain {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.d
}

// Drain starts draining, or moves the deadline of a drain under way: its routes are handed over
// after deadline from now (0: never, they stay until they end).
func (s *Store) Drain(deadline time.Duration) (placement.Drain, error) {
	if deadline < 0 {
		return placement.Drain{}, errors.New("drain deadline must not be negative")
	}
	s.mu.Lock()
	now := s.now()
	d := placement.Drain{Draining: true, Since: s.d.Since}
	if !s.d.Draining {
		d.Since = now
	}
	if deadline > 0 {
		d.Deadline = now.Add(deadline)
	}
	b, err := json.Marshal(d)
	if err == nil {
		err = atomicfile.Write(s.path, b, 0o600)
	}
	if err != nil {
		s.mu.Unlock()
		return s.Get(), fmt.Errorf("drain state: %w", err)
	}
	s.d = d
	f := s.onChange
	s.mu.Unlock()
	if f != nil {
		f()
	}
	return d, nil
}

// Cancel ends a drain: the edge takes new sessions again; routes already handed over stay where
// they went.
func (s *Store) Cancel() (placement.Drain, error) {
	s.mu.Lock()
	if err := atomicfile.Remove(s.path); err != nil {
		s.mu.Unlock()
		return s.Get(), fmt.Errorf("drain state: %w", err)
	}
	s.d = placement.Drain{}
	f := s.onChange
	s.mu.Unlock()
	if f != nil {
		f()
	}
	return placement.Drain{}, nil
}
