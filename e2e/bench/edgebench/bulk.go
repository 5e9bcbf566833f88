package edgebench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/livegate/livegate/e2e/bench/procstat"
	"github.com/livegate/livegate/e2e/internal/netns"
)

// BulkResult is a cold start against a full bucket, and the edge at rest afterwards.
type BulkResult struct {
	Routes int
	// Endpoints is the time from starting the edge until every endpoint was published.
	Endpoints time.Duration
	// HAProxy's map held every route and probes through a spread of public ports were answered
	// at some time between CheckedLo and CheckedHi after the start (both are polled).
	CheckedLo, CheckedHi time.Duration
	// DNATCounted is when nft was first seen listing every route's port in the DNAT map (slow to
	// read, so a late confirmation rather than a timing).
	DNATCounted time.Duration
	EdgeMem     procstat.Memory
	HAProxyRSS  int64
	// HelperRSS is that of the edge's other running children (the long-lived iptables-restore of
	// the static rules until it idles out), HelperPids how many there were.
	HelperRSS  int64
	HelperPids int
	// CPUAtRest is the edge's own share of a core at rest; ChildCPUAtRest that of its
	// descendants meanwhile: the supervised HAProxy, iptables-save on a resync, iptables-restore.
	CPUAtRest, ChildCPUAtRest float64
	// Go runtime figures from the edge's /metrics at rest (go_memstats_*, go_goroutines).
	HeapInuse, HeapIdle, HeapReleased, GoSys, Goroutines float64
}

// Bulk fills the routes bucket, starts the edge and times until every route is routable, then
// reads the edge's memory, then its CPU share over rest (make it longer than the heartbeat
// period, 5 s, so periodic work shows).
func (e *Env) Bulk(ctx context.Context, n int, timeout, rest time.Duration) (BulkResult, error) {
	res := BulkResult{Routes: n}
	if err := e.fill(ctx, n); err != nil {
		return res, err
	}
	eps := e.WatchEndpoints(ctx)
	// Let the watch take its snapshot (of nothing) before the clock starts.
	time.Sleep(200 * time.Millisecond)

	start := time.Now()
	if err := e.StartEdge(ctx); err != nil {
		return res, err
	}
	type bracket struct {
		lo, hi time.Duration
		err    error
	}
	// poll runs check until it holds; the state became true after the last failed check began
	// (lo) and before the successful one ended (hi).
	poll := func(what string, need int, check func() (int, error)) <-chan bracket {
		ch := make(chan bracket, 1)
		go func() {
			var lo time.Duration
			for {
				began := time.Since(start)
				got, err := check()
				if err == nil && got >= need {
					ch <- bracket{lo: lo, hi: time.Since(start)}
					return
				}
				lo = began
				if time.Since(start) > timeout || ctx.Err() != nil {
					ch <- bracket{err: fmt.Errorf("bulk: %s: %d of %d after %s (%v)", what, got, need, timeout, err)}
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
		return ch
	}
	mapCh := poll("HAProxy's map", n, func() (int, error) { return e.MapCount(ctx) })
	// The kernel side is timed by probing: a UDP probe to each of a spread of public ports must
	// come back from the echo behind the DNAT. One port of the range may stay unused, so one
	// sample may stay silent. The full count of the DNAT map's elements is checked too, but
	// listing 9,500 elements takes too long to time by.
	samples := samplePorts(probeSamples)
	probeCh := poll("UDP probes answered through the DNAT", len(samples)-1, func() (int, error) { return e.probeRound(ctx, samples) })
	dnatCh := poll("ports in the DNAT map", n, func() (int, error) { return e.DNATCount(ctx) })
	for eps.Count() < n {
		if time.Since(start) > timeout || e.EdgeP.Exited() {
			<-mapCh
			<-probeCh
			<-dnatCh
			return res, fmt.Errorf("bulk: %d of %d endpoints after %s (edge output: %.500s)", eps.Count(), n, time.Since(start).Round(time.Millisecond), e.EdgeP.Output())
		}
		time.Sleep(5 * time.Millisecond)
	}
	res.Endpoints = time.Since(start)
	m, p, d := <-mapCh, <-probeCh, <-dnatCh
	if m.err != nil || p.err != nil || d.err != nil {
		return res, errors.Join(m.err, p.err, d.err)
	}
	res.CheckedLo, res.CheckedHi = max(m.lo, p.lo), max(m.hi, p.hi)
	res.DNATCounted = d.hi

	// Settle: let the burst of the cold start (GC, the first read-back) pass.
	time.Sleep(3 * time.Second)
	var err error
	if res.EdgeMem, err = procstat.ReadMemory(e.EdgeP.Pid()); err != nil {
		return res, err
	}
	haproxy := map[int]bool{}
	for _, pid := range e.HAProxyPids() {
		haproxy[pid] = true
		if m, err := procstat.ReadMemory(pid); err == nil {
			res.HAProxyRSS += m.RSS
		}
	}
	for _, pid := range procstat.Children(e.EdgeP.Pid()) {
		if haproxy[pid] {
			continue
		}
		if m, err := procstat.ReadMemory(pid); err == nil {
			res.HelperRSS += m.RSS
			res.HelperPids++
		}
	}
	if res.CPUAtRest, res.ChildCPUAtRest, err = procstat.CPUShare(e.EdgeP.Pid(), rest); err != nil {
		return res, err
	}
	if m, err := e.Metrics(ctx); err == nil {
		res.HeapInuse, res.HeapIdle, res.HeapReleased = m["go_memstats_heap_inuse_bytes"], m["go_memstats_heap_idle_bytes"], m["go_memstats_heap_released_bytes"]
		res.GoSys, res.Goroutines = m["go_memstats_sys_bytes"], m["go_goroutines"]
	}
	return res, nil
}

// fill writes routes 0..n-1 with a few writers in parallel.
func (e *Env) fill(ctx context.Context, n int) error {
	return Striped(n, 16, func(i int) error {
		if err := e.PutRoute(ctx, i, 10*time.Minute); err != nil {
			return fmt.Errorf("fill route %d: %w", i, err)
		}
		return nil
	})
}

// Striped runs put for 0..n-1 on writers goroutines, writer w taking w, w+writers, …; a writer
// stops at its own first error, and Striped returns the first error to arrive once every writer
// is done.
func Striped(n, writers int, put func(i int) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := w; i < n; i += writers {
				if err := put(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// probeSamples is how many public ports a probe round covers.
const probeSamples = 64

// samplePorts spreads n ports over the edge's default media range, 10500-20000.
func samplePorts(n int) []uint16 {
	out := make([]uint16, n)
	for i := range out {
		out[i] = uint16(10500 + i*9500/(n-1))
	}
	return out
}

// probeRound sends one probe to each port from a fresh socket (a fresh source port, so a probe
// that arrived before its rule cannot pin a non-NATed conntrack entry for later rounds) and
// counts the ports whose echo comes back within 20 ms.
func (e *Env) probeRound(ctx context.Context, ports []uint16) (int, error) {
	var c *net.UDPConn
	if err := e.Topo.Client.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", &net.UDPAddr{})
		return err
	}); err != nil {
		return 0, err
	}
	defer c.Close()
	for _, p := range ports {
		if _, err := c.WriteToUDPAddrPort([]byte("probe"), netip.AddrPortFrom(netns.EdgePublic, p)); err != nil {
			return 0, err
		}
	}
	seen := map[uint16]bool{}
	buf := make([]byte, 64)
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	for len(seen) < len(ports) && ctx.Err() == nil {
		_, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		seen[from.Port()] = true
	}
	return len(seen), nil
}
