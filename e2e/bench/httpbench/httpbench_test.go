package httpbench

import (
	"testing"
	"time"
)

const sample = `Running 5s test @ http://127.0.0.1:41234/v1/streaming/ready
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.50us  301.20us   8.12ms   91.00%
    Req/Sec    40.12k     2.01k   44.00k    80.00%
  Latency Distribution
     50%  350.00us
     75%  480.00us
     90%  700.00us
     99%    1.52ms
  199650 requests in 5.00s, 31.23MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  39930.12
Transfer/sec:      6.25MB
`

func TestParse(t *testing.T) {
	r, err := Parse(sample)
	if err != nil {
		t.Fatal(err)
	}
	want := Result{RPS: 39930.12, P50: 350 * time.Microsecond, P99: 1520 * time.Microsecond, Requests: 199650, Non2xx: 7, Errors: 3}
	if r != want {
		t.Fatalf("Parse = %+v, want %+v", r, want)
	}
}

func TestParseRejectsIncompleteOutput(t *testing.T) {
	if _, err := Parse("unable to connect to 127.0.0.1:1 Connection refused\n"); err == nil {
		t.Fatal("accepted output without figures")
	}
}

func TestParseDurationUnits(t *testing.T) {
	tests := map[string]time.Duration{"12.00us": 12 * time.Microsecond, "1.50ms": 1500 * time.Microsecond, "2.00s": 2 * time.Second, "1.00m": time.Minute}
	for in, want := range tests {
		got, err := parseDuration(in)
		if err != nil || got != want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := parseDuration("3h"); err == nil {
		t.Error("unknown unit accepted")
	}
}
