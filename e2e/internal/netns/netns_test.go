package netns

import (
	"context"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
)

const testPrefix = "lgen"

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and veth links")
	}
}

func TestTopologyConnectsClientAndNodesThroughEdge(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topo, err := NewTopology(ctx, testPrefix, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})

	// A listener on the edge's public address, reached from the client and from each node: the
	// socket helpers work in both directions and the links route.
	var ln net.Listener
	if err := topo.Edge.Do(func() (err error) {
		ln, err = net.Listen("tcp", "0.0.0.0:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hi"))
			_ = c.Close()
		}
	}()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	targets := map[*Namespace]string{
		topo.Client:   EdgePublic.String(),
		topo.Nodes[0]: EdgeNodeSide(1).String(),
		topo.Nodes[1]: EdgePublic.String(), // across the edge's forwarding
	}
	for ns, host := range targets {
		c, err := ns.Dial(ctx, "tcp", net.JoinHostPort(host, port))
		if err != nil {
			t.Fatalf("dial %s from %s: %v", host, ns.Name, err)
		}
		b, err := io.ReadAll(c)
		_ = c.Close()
		if err != nil || string(b) != "hi" {
			t.Fatalf("read from %s in %s: %q, %v", host, ns.Name, b, err)
		}
	}
	// The root namespace has no route there: the helpers really dialled from inside.
	if c, err := net.DialTimeout("tcp", net.JoinHostPort(EdgePublic.String(), port), 300*time.Millisecond); err == nil {
		_ = c.Close()
		t.Log("root namespace reaches 198.18.1.1 too: the host has a route into the benchmarking range")
	}

}

func TestSweepRemovesOnlyDeadOwnersNamespaces(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A pid that cannot be alive: above the kernel's maximum.
	dead := testPrefix + strconv.FormatInt(1<<23, 36) + "-z"
	live := testPrefix + strconv.FormatInt(int64(os.Getpid()), 36) + "-zz"
	for _, name := range []string{dead, live} {
		n, err := Add(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Delete(context.Background()) })
	}
	swept, err := Sweep(ctx, testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(swept, dead) || slices.Contains(swept, live) {
		t.Fatalf("swept %v, want %s and not %s", swept, dead, live)
	}
	names, err := List(ctx, testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(names, dead) || !slices.Contains(names, live) {
		t.Fatalf("left %v", names)
	}
}
