package conntrack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/vishvananda/netns"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// TestKernelEventFilter runs as root in a network namespace of its own: of the flows made
// there, a socket with the event filter hears only the UDP flows addressed to its address,
// where one without it hears them all.
func TestKernelEventFilter(t *testing.T) {
	ns := eventNamespace(t)
	want, other := netip.MustParseAddr("198.18.5.1"), netip.MustParseAddr("198.18.5.2")
	filter, err := eventFilter(want)
	if err != nil {
		t.Fatal(err)
	}
	filtered, plain := listenEvents(t, ns, filter), listenEvents(t, ns, nil)

	flows := []struct {
		network string
		dst     netip.AddrPort
	}{
		{"udp4", netip.AddrPortFrom(want, 10500)},
		{"udp4", netip.AddrPortFrom(other, 10500)},
		{"tcp4", netip.AddrPortFrom(want, 10500)},
	}
	inNamespace(t, ns, func() {
		for _, f := range flows {
			c, err := net.DialTimeout(f.network, f.dst.String(), time.Second)
			if err == nil {
				_, err = c.Write([]byte("x"))
				c.Close()
			}
			// Nothing listens: the TCP connect is refused, after its flow was made.
			if err != nil && !errors.Is(err, unix.ECONNREFUSED) {
				t.Fatalf("%s to %s: %v", f.network, f.dst, err)
			}
		}
	})

	// The kernel queues an event on every listening socket at once: once the unfiltered socket
	// has heard every flow, whatever the filtered one will hear is queued.
	heard := func(c *netlink.Conn, wait time.Duration) map[string]bool {
		got := map[string]bool{}
		deadline := time.Now().Add(wait)
		for len(got) < len(flows) {
			if err := c.SetReadDeadline(deadline); err != nil {
				t.Fatal(err)
			}
			msgs, err := c.Receive()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				t.Fatalf("receive events: %v", err)
			}
			for _, m := range msgs {
				var ev ct.Event
				if ev.Unmarshal(m) != nil || ev.Type != ct.EventNew {
					continue
				}
				o := ev.Flow.TupleOrig
				network := map[uint8]string{unix.IPPROTO_UDP: "udp4", unix.IPPROTO_TCP: "tcp4"}[o.Proto.Protocol]
				got[network+" "+netip.AddrPortFrom(o.IP.DestinationAddress.Unmap(), o.Proto.DestinationPort).String()] = true
			}
		}
		return got
	}
	all := heard(plain, 5*time.Second)
	kept := heard(filtered, 50*time.Millisecond)
	for _, f := range flows {
		name := f.network + " " + f.dst.String()
		if !all[name] {
			t.Fatalf("the unfiltered socket did not hear the flow %s (heard %v)", name, all)
		}
		if wantKept := f.network == "udp4" && f.dst.Addr() == want; kept[name] != wantKept {
			t.Errorf("filtered socket heard %s = %v, want %v", name, kept[name], wantKept)
		}
	}
}

// eventNamespace makes a namespace with two addresses on its loopback and an iptables rule
// that needs conntrack (without one the kernel tracks nothing in a new namespace), or skips.
func eventNamespace(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	for _, bin := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s: %v", bin, err)
		}
	}
	ns := fmt.Sprintf("lgct%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run("ip", "-n", ns, "link", "set", "lo", "up")
	run("ip", "-n", ns, "addr", "add", "198.18.5.1/32", "dev", "lo")
	run("ip", "-n", ns, "addr", "add", "198.18.5.2/32", "dev", "lo")
	run("ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
	return ns
}

// listenEvents is a socket in ns joined to the NEW events, with filter when it is not nil.
func listenEvents(t *testing.T, ns string, filter []bpf.RawInstruction) *netlink.Conn {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(h)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.JoinGroup(groupNew); err != nil {
		t.Fatal(err)
	}
	if filter != nil {
		if err := c.SetBPF(filter); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// inNamespace runs fn on a thread in ns. A thread that cannot be moved back stays locked, so
// that it ends with the test's goroutine.
func inNamespace(t *testing.T, ns string, fn func()) {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	fn()
	if err := netns.Set(orig); err != nil {
		t.Fatalf("back to the test's namespace: %v", err)
	}
	runtime.UnlockOSThread()
}
