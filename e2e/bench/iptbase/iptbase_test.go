package iptbase

import (
	"testing"
	"time"
)

func TestExtrapolate(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name    string
		perRule []time.Duration
		n       int
		want    time.Duration
	}{
		{"empty", nil, 100, 0},
		{"flat cost", []time.Duration{2 * ms, 2 * ms, 2 * ms, 2 * ms}, 10, 20 * ms},
		// cost = 1ms + 1ms*i: sum over 0..5 = 6 + 15 = 21 ms.
		{"linear growth", []time.Duration{1 * ms, 2 * ms, 3 * ms}, 6, 21 * ms},
		{"within measured", []time.Duration{1 * ms, 5 * ms, 3 * ms}, 2, 6 * ms},
		// A falling fit is clamped to flat: mean 2 ms per rule.
		{"negative slope clamped", []time.Duration{3 * ms, 2 * ms, 1 * ms}, 4, 8 * ms},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Extrapolate(tt.perRule, tt.n)
			if d := got - tt.want; d > time.Microsecond || d < -time.Microsecond {
				t.Fatalf("Extrapolate = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRuleMatchesLivegateShape(t *testing.T) {
	got := Rule("C", 0)
	want := []string{"-t", "nat", "-A", "C", "-d", "198.18.1.1/32", "-p", "udp", "-m", "udp", "--dport", "10500",
		"-m", "comment", "--comment", "lg:10500", "-j", "DNAT", "--to-destination", "198.19.1.2:30000"}
	if len(got) != len(want) {
		t.Fatalf("Rule = %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Rule[%d] = %q, want %q (%v)", i, got[i], want[i], got)
		}
	}
}
