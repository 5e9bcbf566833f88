package drainstate

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestDrainSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	now := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	s, err := Open(path, clock)
	if err != nil {
		t.Fatal(err)
	}
	if s.Get().Draining {
		t.Fatal("a new store drains")
	}
	changed := 0
	s.OnChange(func() { changed++ })
	d, err := s.Drain(10 * time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Draining || !d.Since.Equal(now) || !d.Deadline.Equal(now.Add(10*time.Minute)) {
		t.Fatalf("drain %+v", d)
	}
	// A later drain moves the deadline and keeps when draining began.
	now = now.Add(time.Minute)
	if d, err = s.Drain(0); err != nil || !d.Since.Equal(now.Add(-time.Minute)) || !d.Deadline.IsZero() {
		t.Fatalf("second drain %+v %v", d, err)
	}
	again, err := Open(path, clock)
	if err != nil {
		t.Fatal(err)
	}
	if got := again.Get(); got != d {
		t.Fatalf("reopened %+v, want %+v", got, d)
	}
	if _, err := again.Cancel(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("state file after cancel: %v", err)
	}
	if changed != 2 {
		t.Errorf("%d change notifications, want 2", changed)
	}
	if _, err := s.Drain(-time.Second); err == nil {
		t.Error("negative deadline accepted")
	}
}

func TestUnreadableFileIsAnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, time.Now); err == nil {
		t.Fatal("bad state file accepted")
	}
}
