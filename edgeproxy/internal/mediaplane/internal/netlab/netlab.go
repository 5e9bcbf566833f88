// Package netlab builds the three network namespaces the media plane's kernel tests run in:
// a client, an edge and a node, joined by veth pairs and addressed inside 198.18.0.0/15.
//
//	client 198.18.1.2/24 ── 198.18.1.1/24 edge 198.19.2.1/24 ── 198.19.2.2/24, 198.19.2.3/24 node
//
// The edge forwards (ip_forward=1) with a DROP policy on FORWARD, so forwarding works only
// through the rules under test. The node has no route beyond its link. Everything is removed
// in t.Cleanup, failures included.
package netlab

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// Addresses of the lab.
var (
	ClientAddr = netip.MustParseAddr("198.18.1.2")
	PublicAddr = netip.MustParseAddr("198.18.1.1")
	EdgeInner  = netip.MustParseAddr("198.19.2.1")
	NodeA      = netip.MustParseAddr("198.19.2.2")
	NodeB      = netip.MustParseAddr("198.19.2.3")
)

// Lab is one set of namespaces.
type Lab struct {
	Client, Edge, Node string
}

var labs atomic.Int32

// New creates the namespaces, or skips the test when it cannot (not root, tools missing).
func New(t *testing.T) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces and program iptables")
	}
	for _, bin := range []string{"ip", "iptables-save", "iptables-restore", "iptables", "conntrack"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s: %v", bin, err)
		}
	}
	// Interface names are limited to 15 bytes: "lgm" + pid (≤7) + lab letter(s) + 2.
	base := fmt.Sprintf("lgm%d%s", os.Getpid(), labID(int(labs.Add(1))))
	l := &Lab{Client: base + "c", Edge: base + "e", Node: base + "n"}
	for _, ns := range []string{l.Client, l.Edge, l.Node} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Logf("delete namespace %s: %v: %s", ns, err, out)
			}
		})
	}
	run(t, "ip", "link", "add", base+"ce", "netns", l.Client, "type", "veth", "peer", "name", base+"ec", "netns", l.Edge)
	run(t, "ip", "link", "add", base+"en", "netns", l.Edge, "type", "veth", "peer", "name", base+"ne", "netns", l.Node)
	steps := [][]string{
		{l.Client, "ip", "addr", "add", "198.18.1.2/24", "dev", base + "ce"},
		{l.Edge, "ip", "addr", "add", "198.18.1.1/24", "dev", base + "ec"},
		{l.Edge, "ip", "addr", "add", "198.19.2.1/24", "dev", base + "en"},
		{l.Node, "ip", "addr", "add", "198.19.2.2/24", "dev", base + "ne"},
		{l.Node, "ip", "addr", "add", "198.19.2.3/24", "dev", base + "ne"},
		{l.Client, "ip", "link", "set", "lo", "up"},
		{l.Edge, "ip", "link", "set", "lo", "up"},
		{l.Node, "ip", "link", "set", "lo", "up"},
		{l.Client, "ip", "link", "set", base + "ce", "up"},
		{l.Edge, "ip", "link", "set", base + "ec", "up"},
		{l.Edge, "ip", "link", "set", base + "en", "up"},
		{l.Node, "ip", "link", "set", base + "ne", "up"},
		{l.Edge, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
		{l.Edge, "iptables", "-P", "FORWARD", "DROP"},
	}
	for _, s := range steps {
		l.Exec(t, s[0], s[1:]...)
	}
	return l
}

func labID(n int) string {
	var b []byte
	for n > 0 {
		n--
		b = append([]byte{byte('a' + n%26)}, b...)
		n /= 26
	}
	return string(b)
}

func run(t *testing.T, argv ...string) string {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out.String())
	}
	return out.String()
}

// Exec runs a command inside a namespace and returns its combined output.
func (l *Lab) Exec(t *testing.T, ns string, argv ...string) string {
	t.Helper()
	return run(t, append([]string{"ip", "netns", "exec", ns}, argv...)...)
}

// Conntrack lists the edge's UDP conntrack entries originally addressed to the public port.
func (l *Lab) Conntrack(t *testing.T, port uint16) []string {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", l.Edge, "conntrack", "-L", "-p", "udp", "--orig-port-dst", fmt.Sprint(port))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("conntrack -L: %v: %s", err, stderr.String())
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		if line != "" {
			out = append(out, line)
		}
	}
	return out
}

// ListenUDP opens a UDP socket inside a namespace; it stays there whatever goroutine uses it.
func (l *Lab) ListenUDP(t *testing.T, ns string, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	err := inNetns(ns, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		t.Fatalf("listen udp %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// inNetns runs fn on an OS thread switched into the namespace. A thread that cannot switch
// back stays locked, so the runtime discards it instead of reusing it in the wrong namespace.
func inNetns(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("namespace %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave namespace %s: %w", name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Echo is a UDP server in the node namespace that answers each datagram with its name, a
// colon and the datagram, and remembers the source addresses it saw.
type Echo struct {
	Name string
	mu   sync.Mutex
	srcs []netip.AddrPort
}

// StartEcho serves on addr inside the node namespace until the test ends.
func (l *Lab) StartEcho(t *testing.T, name string, addr netip.AddrPort) *Echo {
	t.Helper()
	conn := l.ListenUDP(t, l.Node, addr)
	e := &Echo{Name: name}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, src, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			e.mu.Lock()
			e.srcs = append(e.srcs, src)
			e.mu.Unlock()
			reply := append([]byte(name+":"), buf[:n]...)
			if _, err := conn.WriteToUDPAddrPort(reply, src); err != nil {
				return
			}
		}
	}()
	return e
}

// Sources returns the source addresses seen so far.
func (e *Echo) Sources() []netip.AddrPort {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]netip.AddrPort(nil), e.srcs...)
}

// Client sends datagrams from the client namespace.
type Client struct {
	conn *net.UDPConn
}

// NewClient opens a client socket on an ephemeral port.
func (l *Lab) NewClient(t *testing.T) *Client {
	t.Helper()
	return &Client{conn: l.ListenUDP(t, l.Client, netip.AddrPortFrom(ClientAddr, 0))}
}

// NewClientIn opens a client socket in another namespace of the lab, e.g. the edge itself.
func (l *Lab) NewClientIn(t *testing.T, ns string) *Client {
	t.Helper()
	return &Client{conn: l.ListenUDP(t, ns, netip.AddrPortFrom(netip.IPv4Unspecified(), 0))}
}

// Ask sends payload to the edge's public port and returns the first answer, or "" when none
// comes within wait.
func (c *Client) Ask(t *testing.T, port uint16, payload string, wait time.Duration) string {
	t.Helper()
	answer, err := c.Try(port, payload, wait)
	if err != nil {
		t.Fatal(err)
	}
	return answer
}

// Try is Ask for goroutines other than the test's: it reports failures instead of stopping
// the test.
func (c *Client) Try(port uint16, payload string, wait time.Duration) (string, error) {
	if _, err := c.conn.WriteToUDPAddrPort([]byte(payload), netip.AddrPortFrom(PublicAddr, port)); err != nil {
		return "", fmt.Errorf("send to %d: %w", port, err)
	}
	buf := make([]byte, 2048)
	if err := c.conn.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return "", err
	}
	for {
		n, _, err := c.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return "", nil
			}
			return "", fmt.Errorf("read answer from %d: %w", port, err)
		}
		answer := string(buf[:n])
		// Late answers to earlier datagrams are skipped; each answer ends with its payload.
		if strings.HasSuffix(answer, ":"+payload) {
			return answer, nil
		}
	}
}
