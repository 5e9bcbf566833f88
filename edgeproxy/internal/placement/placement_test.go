package placement

import (
	"slices"
	"testing"
	"time"
)

func TestRoom(t *testing.T) {
	cases := []struct {
		name  string
		e     Edge
		share float64
		want  int
	}{
		{"route slots bound without media", Edge{MaxRoutes: 10, Routes: 4}, 0.1, 6},
		{"free ports bound", Edge{MaxRoutes: 100, PortCapacity: 100, FreePorts: 20, Routes: 80, BeatRoutes: 80}, 0, 20},
		{"reserve kept", Edge{MaxRoutes: 100, PortCapacity: 100, FreePorts: 20, Routes: 80, BeatRoutes: 80}, 0.05, 15},
		{"routes since the heartbeat take ports", Edge{MaxRoutes: 100, PortCapacity: 100, FreePorts: 20, Routes: 85, BeatRoutes: 80}, 0, 15},
		{"routes ended since the heartbeat give none back", Edge{MaxRoutes: 100, PortCapacity: 100, FreePorts: 20, Routes: 70, BeatRoutes: 80}, 0, 20},
		{"full", Edge{MaxRoutes: 10, Routes: 10}, 0, 0},
		{"below reserve", Edge{MaxRoutes: 100, PortCapacity: 100, FreePorts: 3, Routes: 97, BeatRoutes: 97}, 0.05, -2},
	}
	for _, c := range cases {
		if got := c.e.Room(c.share); got != c.want {
			t.Errorf("%s: Room = %d, want %d", c.name, got, c.want)
		}
	}
}

func TestReserve(t *testing.T) {
	for _, c := range []struct {
		capacity int
		share    float64
		want     int
	}{{9501, 0.02, 190}, {100, 0.05, 5}, {3, 0.05, 0}, {0, 0.5, 0}, {100, 0, 0}} {
		if got := Reserve(c.capacity, c.share); got != c.want {
			t.Errorf("Reserve(%d, %v) = %d, want %d", c.capacity, c.share, got, c.want)
		}
	}
}

func TestAssign(t *testing.T) {
	a := Edge{ID: "a", MaxRoutes: 100, PortCapacity: 100, FreePorts: 90, Routes: 10, BeatRoutes: 10}
	b := Edge{ID: "b", MaxRoutes: 100, PortCapacity: 100, FreePorts: 95, Routes: 5, BeatRoutes: 5}
	drainingB := b
	drainingB.Draining = true
	fullB := Edge{ID: "b", MaxRoutes: 100, PortCapacity: 100, FreePorts: 4, Routes: 96, BeatRoutes: 96}
	cases := []struct {
		name  string
		edges []Edge
		keys  []string
		want  map[string]string // key → first edge
	}{
		{"most room first", []Edge{a, b}, []string{"k1"}, map[string]string{"k1": "b"}},
		{"a burst evens the rooms out", []Edge{a, b}, []string{"k1", "k2", "k3", "k4", "k5", "k6", "k7"},
			map[string]string{"k1": "b", "k2": "b", "k3": "b", "k4": "b", "k5": "b"}},
		{"draining edge gets nothing", []Edge{a, drainingB}, []string{"k1"}, map[string]string{"k1": "a"}},
		{"edge at its reserve gets nothing", []Edge{a, fullB}, []string{"k1"}, map[string]string{"k1": "a"}},
		{"no edge open", []Edge{drainingB}, []string{"k1"}, map[string]string{}},
	}
	for _, c := range cases {
		got := Assign(c.edges, c.keys, 0.05)
		for k, first := range c.want {
			if len(got[k]) == 0 || got[k][0] != first {
				t.Errorf("%s: %s ranked %v, want %s first", c.name, k, got[k], first)
			}
		}
		if c.name == "a burst evens the rooms out" {
			// After five to b the rooms are equal (85 each): the rest go by the hash, to both.
			firsts := map[string]int{}
			for _, r := range got {
				firsts[r[0]]++
			}
			if firsts["a"]+firsts["b"] != 7 || firsts["b"] < 5 {
				t.Errorf("%s: firsts %v", c.name, firsts)
			}
		}
		if len(c.want) == 0 && len(got) != 0 {
			t.Errorf("%s: got %v, want nothing", c.name, got)
		}
		for k, r := range got {
			for _, e := range c.edges {
				if !e.Claimable(0.05) && slices.Contains(r, e.ID) {
					t.Errorf("%s: %s ranks %s, which takes no new route", c.name, k, e.ID)
				}
			}
		}
	}
}

func TestAssignAgreesWhateverTheOrder(t *testing.T) {
	a := Edge{ID: "a", MaxRoutes: 10, Routes: 2}
	b := Edge{ID: "b", MaxRoutes: 10, Routes: 2}
	c := Edge{ID: "c", MaxRoutes: 10, Routes: 2}
	keys := []string{"x", "y", "z", "w", "v", "u"}
	one := Assign([]Edge{a, b, c}, keys, 0)
	rev := slices.Clone(keys)
	slices.Reverse(rev)
	two := Assign([]Edge{c, a, b}, rev, 0)
	for k, r := range one {
		if !slices.Equal(r, two[k]) {
			t.Errorf("%s: %v and %v", k, r, two[k])
		}
	}
	if len(one) != len(keys) {
		t.Errorf("assigned %d of %d", len(one), len(keys))
	}
}

func TestAssignStopsWhenRoomRunsOut(t *testing.T) {
	got := Assign([]Edge{{ID: "a", MaxRoutes: 2}}, []string{"k1", "k2", "k3"}, 0)
	if len(got) != 2 || got["k3"] != nil {
		t.Errorf("got %v, want k1 and k2 only", got)
	}
}

func TestDelay(t *testing.T) {
	ranked := []string{"b", "a", "c"}
	for _, c := range []struct {
		self string
		want time.Duration
		ok   bool
	}{{"b", 0, true}, {"a", time.Second, true}, {"c", 2 * time.Second, true}, {"d", 0, false}} {
		got, ok := Delay(c.self, ranked, time.Second)
		if got != c.want || ok != c.ok {
			t.Errorf("Delay(%s) = %s %t, want %s %t", c.self, got, ok, c.want, c.ok)
		}
	}
}

func TestDrain(t *testing.T) {
	since := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	deadline := since.Add(10 * time.Minute)
	cases := []struct {
		name    string
		d       Drain
		now     time.Time
		release bool
		next    time.Time
	}{
		{"not draining", Drain{}, since, false, time.Time{}},
		{"before the deadline", Drain{Draining: true, Since: since, Deadline: deadline}, since.Add(time.Minute), false, deadline},
		{"at the deadline", Drain{Draining: true, Since: since, Deadline: deadline}, deadline, true, time.Time{}},
		{"after the deadline", Drain{Draining: true, Since: since, Deadline: deadline}, deadline.Add(time.Hour), true, time.Time{}},
		{"no deadline", Drain{Draining: true, Since: since}, since.Add(1000 * time.Hour), false, time.Time{}},
	}
	for _, c := range cases {
		if got := c.d.Release(c.now); got != c.release {
			t.Errorf("%s: Release = %t, want %t", c.name, got, c.release)
		}
		if got := c.d.Next(c.now); !got.Equal(c.next) {
			t.Errorf("%s: Next = %s, want %s", c.name, got, c.next)
		}
		if got := c.d.Reason(c.now); (got == "") == c.d.Draining {
			t.Errorf("%s: Reason %q", c.name, got)
		}
	}
}
