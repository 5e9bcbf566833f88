package portalloc

import (
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

func newAlloc(t *testing.T, r Range, q time.Duration) (*Allocator, *fakeClock) {
	t.Helper()
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	a, err := New(r, q, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	return a, clk
}

func TestParseRange(t *testing.T) {
	tests := []struct {
		in      string
		want    Range
		wantErr bool
	}{
		{in: "10500-20000", want: Range{10500, 20000}},
		{in: " 7-7 ", want: Range{7, 7}},
		{in: "4000", want: Range{4000, 4000}},
		{in: "20000-10500", wantErr: true},
		{in: "0-10", wantErr: true},
		{in: "1-65536", wantErr: true},
		{in: "a-b", wantErr: true},
		{in: "", wantErr: true},
		{in: "-5", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseRange(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseRange(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("ParseRange(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

// step is one operation on an allocator; the table tests below run sequences of them.
type step struct {
	advance   time.Duration
	allocate  string
	n         int
	preferred []uint16
	release   string
	reserve   uint16

	want      []uint16
	exhausted bool
	free      int
}

func TestAllocator(t *testing.T) {
	r := Range{100, 103}
	const q = time.Minute
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "round robin then exhausted",
			steps: []step{
				{allocate: "a", n: 2, want: []uint16{100, 101}, free: 2},
				{allocate: "b", n: 1, want: []uint16{102}, free: 1},
				{allocate: "c", n: 2, exhausted: true, free: 1},
				{allocate: "c", n: 1, want: []uint16{103}, free: 0},
			},
		},
		{
			name: "same call is idempotent",
			steps: []step{
				{allocate: "a", n: 2, want: []uint16{100, 101}, free: 2},
				{allocate: "a", n: 2, preferred: []uint16{102, 103}, want: []uint16{100, 101}, free: 2},
			},
		},
		{
			name: "released ports wait out the quarantine",
			steps: []step{
				{allocate: "a", n: 4, want: []uint16{100, 101, 102, 103}, free: 0},
				{release: "a", free: 0},
				{allocate: "b", n: 1, exhausted: true, free: 0},
				{advance: q - time.Second, allocate: "b", n: 1, exhausted: true, free: 0},
				{advance: time.Second, allocate: "b", n: 1, want: []uint16{100}, free: 3},
			},
		},
		{
			name: "freed ports are reused last",
			steps: []step{
				{allocate: "a", n: 1, want: []uint16{100}, free: 3},
				{release: "a", free: 3},
				{advance: q, allocate: "b", n: 1, want: []uint16{101}, free: 3},
				{allocate: "c", n: 2, want: []uint16{102, 103}, free: 1},
				{allocate: "d", n: 1, want: []uint16{100}, free: 0},
			},
		},
		{
			name: "preferred ports are kept when free",
			steps: []step{
				{allocate: "a", n: 2, preferred: []uint16{103, 101}, want: []uint16{103, 101}, free: 2},
				{allocate: "b", n: 2, preferred: []uint16{103, 99}, want: []uint16{100, 102}, free: 0},
			},
		},
		{
			name: "a key reclaims its own quarantined port, others cannot",
			steps: []step{
				{allocate: "a", n: 1, preferred: []uint16{102}, want: []uint16{102}, free: 3},
				{release: "a", free: 3},
				{allocate: "b", n: 1, preferred: []uint16{102}, want: []uint16{100}, free: 2},
				{allocate: "a", n: 1, preferred: []uint16{102}, want: []uint16{102}, free: 2},
			},
		},
		{
			name: "ports found in the kernel are reserved but claimable as preferred",
			steps: []step{
				{reserve: 101, free: 3},
				{reserve: 102, free: 2},
				{allocate: "x", n: 1, want: []uint16{100}, free: 1},
				{allocate: "a", n: 1, preferred: []uint16{102}, want: []uint16{102}, free: 1},
				{allocate: "b", n: 1, want: []uint16{103}, free: 0},
				{advance: q, free: 1},
			},
		},
		{
			name: "growing keeps held ports, shrinking quarantines the tail",
			steps: []step{
				{allocate: "a", n: 1, want: []uint16{100}, free: 3},
				{allocate: "a", n: 3, want: []uint16{100, 101, 102}, free: 1},
				{allocate: "a", n: 1, want: []uint16{100}, free: 1},
				{advance: q, free: 3},
				{allocate: "a", n: 0, free: 3},
				{advance: q, free: 4},
			},
		},
		{
			name: "a failed allocation gives back what it took",
			steps: []step{
				{allocate: "a", n: 1, preferred: []uint16{103}, want: []uint16{103}, free: 3},
				{release: "a", free: 3},
				{allocate: "a", n: 5, preferred: []uint16{103}, exhausted: true, free: 3},
				{allocate: "b", n: 3, want: []uint16{100, 101, 102}, free: 0},
				{allocate: "c", n: 1, preferred: []uint16{103}, exhausted: true, free: 0},
				{advance: q, free: 1},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, clk := newAlloc(t, r, q)
			for i, s := range tt.steps {
				clk.Advance(s.advance)
				switch {
				case s.allocate != "":
					got, err := a.Allocate(s.allocate, s.n, s.preferred)
					if s.exhausted {
						if !errors.Is(err, ErrExhausted) {
							t.Fatalf("step %d: Allocate(%q, %d) error = %v, want ErrExhausted", i, s.allocate, s.n, err)
						}
					} else if err != nil {
						t.Fatalf("step %d: Allocate(%q, %d): %v", i, s.allocate, s.n, err)
					}
					if !slices.Equal(got, s.want) {
						t.Fatalf("step %d: Allocate(%q, %d) = %v, want %v", i, s.allocate, s.n, got, s.want)
					}
				case s.release != "":
					a.Release(s.release)
				case s.reserve != 0:
					a.Reserve(s.reserve)
				}
				total, free := a.Capacity()
				if total != r.Size() || free != s.free {
					t.Fatalf("step %d: Capacity() = %d, %d, want %d, %d", i, total, free, r.Size(), s.free)
				}
			}
		})
	}
}

func TestZeroQuarantineFreesAtOnce(t *testing.T) {
	a, _ := newAlloc(t, Range{1, 1}, 0)
	if _, err := a.Allocate("a", 1, nil); err != nil {
		t.Fatal(err)
	}
	a.Release("a")
	got, err := a.Allocate("b", 1, nil)
	if err != nil || !slices.Equal(got, []uint16{1}) {
		t.Fatalf("Allocate after release = %v, %v", got, err)
	}
}

func TestFullDefaultRange(t *testing.T) {
	a, clk := newAlloc(t, Range{10500, 20000}, time.Minute)
	seen := make(map[uint16]bool)
	for i := range 9501 {
		ports, err := a.Allocate("k"+strconv.Itoa(i), 1, nil)
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if seen[ports[0]] {
			t.Fatalf("port %d handed out twice", ports[0])
		}
		seen[ports[0]] = true
	}
	if _, err := a.Allocate("one-too-many", 1, nil); !errors.Is(err, ErrExhausted) {
		t.Fatalf("allocation beyond the range: %v, want ErrExhausted", err)
	}
	a.Release("k0")
	clk.Advance(time.Minute)
	if got, err := a.Allocate("late", 1, nil); err != nil || got[0] != 10500 {
		t.Fatalf("allocation after quarantine = %v, %v, want [10500]", got, err)
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	if _, err := New(Range{5, 4}, time.Minute, nil); err == nil {
		t.Fatal("New accepted an empty range")
	}
	if _, err := New(Range{5, 6}, -time.Second, nil); err == nil {
		t.Fatal("New accepted a negative quarantine")
	}
	a, _ := newAlloc(t, Range{5, 6}, 0)
	if _, err := a.Allocate("a", -1, nil); err == nil {
		t.Fatal("Allocate accepted a negative count")
	}
}

func TestUsage(t *testing.T) {
	a, clk := newAlloc(t, Range{100, 109}, time.Minute)
	type usage struct{ inUse, quarantined, free int }
	get := func() usage { u, q, f := a.Usage(); return usage{u, q, f} }
	steps := []struct {
		name string
		do   func()
		want usage
	}{
		{"empty", func() {}, usage{0, 0, 10}},
		{"three allocated", func() {
			if _, err := a.Allocate("a", 2, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := a.Allocate("b", 1, nil); err != nil {
				t.Fatal(err)
			}
		}, usage{3, 0, 7}},
		{"one key released", func() { a.Release("a") }, usage{1, 2, 7}},
		{"unknown owner reserved", func() { a.Reserve(109) }, usage{1, 3, 6}},
		{"quarantine over", func() { clk.Advance(time.Minute) }, usage{1, 0, 9}},
	}
	for _, s := range steps {
		s.do()
		if got := get(); got != s.want {
			t.Fatalf("%s: Usage = %+v, want %+v", s.name, got, s.want)
		}
		if _, free := a.Capacity(); free != s.want.free {
			t.Fatalf("%s: Capacity free = %d, Usage free = %d", s.name, free, s.want.free)
		}
	}
}

func TestReleasedPortsReturnToTheirKey(t *testing.T) {
	a, clk := newAlloc(t, Range{100, 109}, time.Minute)
	first, err := a.Allocate("a", 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Allocate("b", 1, nil); err != nil {
		t.Fatal(err)
	}
	a.Release("a")
	if got, err := a.Allocate("c", 2, nil); err != nil || slices.Contains(got, first[0]) || slices.Contains(got, first[1]) {
		t.Fatalf("another key got %v (%v) while %v rest", got, err, first)
	}
	got, err := a.Allocate("a", 2, nil)
	if err != nil || !slices.Equal(got, first) {
		t.Fatalf("key back within the quarantine: %v (%v), want its own %v", got, err, first)
	}
	a.Release("a")
	clk.Advance(time.Minute)
	if _, free := a.Capacity(); free != 7 || len(a.rested) != 0 {
		t.Fatalf("after the quarantine: %d free, rested %v; want 7 free and nothing remembered", free, a.rested)
	}
}

// TestOlderQuarantineKeepsNewerRest: a key's ports leaving quarantine do not make it forget
// other ports it released later, which still rest.
func TestOlderQuarantineKeepsNewerRest(t *testing.T) {
	a, clk := newAlloc(t, Range{100, 109}, time.Minute)
	if _, err := a.Allocate("a", 1, []uint16{100}); err != nil {
		t.Fatal(err)
	}
	a.Release("a")
	clk.Advance(30 * time.Second)
	if got, err := a.Allocate("a", 1, []uint16{105}); err != nil || got[0] != 105 {
		t.Fatalf("preferred port: %v (%v)", got, err)
	}
	a.Release("a")
	clk.Advance(30 * time.Second) // port 100 leaves quarantine; 105 still rests
	if got, err := a.Allocate("a", 1, nil); err != nil || got[0] != 105 {
		t.Fatalf("key back: %v (%v), want the port it released last, 105", got, err)
	}
}

func TestFresh(t *testing.T) {
	a, clk := newAlloc(t, Range{100, 103}, time.Minute)
	got, err := a.Allocate("a", 2, []uint16{102})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []uint16{102, 100}) {
		t.Fatalf("Allocate = %v, want [102 100]", got)
	}
	tests := []struct {
		port uint16
		want bool
	}{
		{102, false}, // preferred: the key's clients may know it
		{100, true},  // round-robin
		{101, false}, // free
		{99, false},  // out of range
	}
	for _, tt := range tests {
		if got := a.Fresh(tt.port); got != tt.want {
			t.Errorf("Fresh(%d) = %v, want %v", tt.port, got, tt.want)
		}
	}
	if _, err := a.Allocate("a", 2, nil); err != nil || !a.Fresh(100) {
		t.Fatalf("a held port stays fresh: err %v, Fresh(100) = %v", err, a.Fresh(100))
	}
	a.Release("a")
	if a.Fresh(100) {
		t.Fatal("a quarantined port is not fresh")
	}
	if got, err := a.Allocate("a", 2, nil); err != nil || !slices.Equal(got, []uint16{102, 100}) || a.Fresh(100) {
		t.Fatalf("back from its own quarantine: Allocate = %v, %v; Fresh(100) = %v, want [102 100] not fresh", got, err, a.Fresh(100))
	}
	a.Release("a")
	clk.Advance(time.Minute)
	if got, err := a.Allocate("b", 1, nil); err != nil || !a.Fresh(got[0]) {
		t.Fatalf("another key after the quarantine: Allocate = %v, %v; want a fresh port", got, err)
	}
}
