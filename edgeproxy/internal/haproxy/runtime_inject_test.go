package haproxy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
)

// TestInjectionRuntimeDriverSendsNothing hands the runtime driver hostile session ids and
// backends directly, as if route validation had been skipped. Each Apply is refused with the
// command and the word at fault, and the socket receives nothing at all, so one bad entry never
// lets the others through either.
func TestInjectionRuntimeDriverSendsNothing(t *testing.T) {
	sock := newFakeSocket(t)
	d, err := haproxy.NewRuntimeDriver(haproxy.NewClient(sock.path, 5*time.Second), fuzzMap)
	if err != nil {
		t.Fatal(err)
	}
	const ok = "198.19.0.10:30000"
	for _, tt := range []struct{ key, value string }{
		{"s\nshow info", ok}, {"s\rshow info", ok}, {"s x", ok}, {"s;clear map " + fuzzMap, ok}, {"#0", ok}, {"s#", ok},
		{"s", ok + "\nclear map " + fuzzMap}, {"s", ok + " x"}, {"s", ok + ";"}, {"s", ok + "#"}, {"s", "<<"}, {"s<<", ok},
		{"s\x00", ok}, {"s\t", ok}, {"s\\", ok}, {"'s'", ok}, {`"s"`, ok}, {"", ok}, {"s", ""}, {"s\x7f", ok},
	} {
		err := d.Apply(context.Background(), map[string]string{"good": ok, tt.key: tt.value}, nil)
		if err == nil || !strings.HasPrefix(err.Error(), `runtime command "set"`) || !strings.Contains(err.Error(), "word") && !strings.Contains(err.Error(), "empty") {
			t.Errorf("set %q=%q: %v", tt.key, tt.value, err)
		}
		if lines := sock.take(); len(lines) != 0 {
			t.Errorf("set %q=%q: HAProxy got %q", tt.key, tt.value, lines)
		}
		if tt.key == "s" {
			continue
		}
		err = d.Apply(context.Background(), nil, []string{"good", tt.key})
		if err == nil || !strings.HasPrefix(err.Error(), `runtime command "del"`) {
			t.Errorf("del %q: %v", tt.key, err)
		}
		if lines := sock.take(); len(lines) != 0 {
			t.Errorf("del %q: HAProxy got %q", tt.key, lines)
		}
	}
}
