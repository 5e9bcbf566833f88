package stats

import (
	"math"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) Durations {
		var d Durations
		for _, x := range v {
			d = append(d, time.Duration(x)*time.Millisecond)
		}
		return d
	}
	tests := []struct {
		name string
		d    Durations
		p    float64
		want time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one", ms(7), 99, 7 * time.Millisecond},
		{"median odd", ms(5, 1, 3), 50, 3 * time.Millisecond},
		{"p99 of 100", ms(func() []int {
			v := make([]int, 100)
			for i := range v {
				v[i] = i + 1
			}
			return v
		}()...), 99, 99 * time.Millisecond},
		{"p100 is max", ms(1, 9, 4), 100, 9 * time.Millisecond},
		{"p0 is min", ms(4, 2, 8), 0, 2 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.d.Percentile(tt.p); got != tt.want {
				t.Fatalf("Percentile(%v) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}

func TestPercentileDoesNotReorderSamples(t *testing.T) {
	d := Durations{3, 1, 2}
	_ = d.Percentile(50)
	if d[0] != 3 || d[1] != 1 || d[2] != 2 {
		t.Fatalf("samples reordered: %v", d)
	}
}

func TestRatioAndFormat(t *testing.T) {
	tests := []struct {
		a, b float64
		want string
	}{
		{1, 25, "0.040×"},
		{9, 10, "0.90×"},
		{35, 10, "3.50×"},
		{250, 10, "25.0×"},
		{5000, 10, "500×"},
		{1, 0, "n/a"},
	}
	for _, tt := range tests {
		if got := FormatRatio(Ratio(tt.a, tt.b)); got != tt.want {
			t.Errorf("FormatRatio(%v/%v) = %q, want %q", tt.a, tt.b, got, tt.want)
		}
	}
	if !math.IsNaN(Ratio(1, 0)) {
		t.Error("Ratio by zero should be NaN")
	}
}

func TestFormatDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{1200 * time.Microsecond, "1.20ms"},
		{450 * time.Microsecond, "450µs"},
		{2500 * time.Millisecond, "2.50s"},
	}
	for _, tt := range tests {
		if got := FormatDuration(tt.d); got != tt.want {
			t.Errorf("FormatDuration(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestFormatRate(t *testing.T) {
	tests := []struct {
		r    float64
		want string
	}{
		{950, "950"},
		{12345, "12.3k"},
		{2_500_000, "2.50M"},
	}
	for _, tt := range tests {
		if got := FormatRate(tt.r); got != tt.want {
			t.Errorf("FormatRate(%v) = %q, want %q", tt.r, got, tt.want)
		}
	}
}
