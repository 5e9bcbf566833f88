// Package dnatmaptest has an in-memory stand-in for dnatmap.Kernel, for the unit tests of what
// drives the map.
package dnatmaptest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"syscall"

	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/internal/dnatmap"
)

// Fake has the method set of dnatmap.Kernel with the kernel's semantics: a transaction is
// applied whole or not at all, a refused Apply wraps syscall.ENOENT (a deleted port is absent,
// or there is no table) or syscall.EEXIST (a set port is present after the deletes), as the
// kernel's errors do, so errors.Is(err, fs.ErrNotExist) and fs.ErrExist tell them apart for
// both. The test hooks change the state behind the caller's back. The zero value is an empty
// namespace: no table. It is safe for concurrent use.
type Fake struct {
	mu       sync.Mutex
	present  bool
	layout   dnatmap.Layout
	elements map[uint16]netip.AddrPort
	failNext error
	closed   bool
	calls    Calls
	applied  []dnatmap.Change
}

// Calls counts what reached the fake kernel: calls failed by FailNext, a done context or Close
// are not counted.
type Calls struct {
	// Ensures is the number of Ensure transactions: calls that found the layout not current.
	Ensures int
	// Applies is the number of Apply transactions, refused ones included; an empty change is
	// none.
	Applies int
	// Refused is the number of Apply transactions refused.
	Refused int
	// Deletes and Sets are the element operations of the Apply transactions committed.
	Deletes, Sets int
	// Removes is the number of Remove calls that found the table.
	Removes int
}

// Calls returns the counters so far.
func (f *Fake) Calls() Calls {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// FailNext makes the next call of any method return err and change nothing.
func (f *Fake) FailNext(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = err
}

// Drop removes the table, as someone flushing the ruleset would.
func (f *Fake) Drop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.present = false
	f.elements = nil
}

// SetElement adds or re-points one element outside any Apply. It does nothing when there is
// no table, as nft would fail.
func (f *Fake) SetElement(port uint16, backend netip.AddrPort) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.present {
		f.elements[port] = backend
	}
}

// DeleteElement deletes one element outside any Apply, if present.
func (f *Fake) DeleteElement(port uint16) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.elements, port)
}

// Applied returns the changes Apply committed, oldest first.
func (f *Fake) Applied() []dnatmap.Change {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.applied)
}

// Layout returns the table's layout, and whether there is a table.
func (f *Fake) Layout() (dnatmap.Layout, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.layout, f.present
}

// Closed reports whether Close was called.
func (f *Fake) Closed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// Elements returns a copy of the map's elements; empty when there is no table.
func (f *Fake) Elements() map[uint16]netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.copyElements()
}

func (f *Fake) copyElements() map[uint16]netip.AddrPort {
	out := make(map[uint16]netip.AddrPort, len(f.elements))
	maps.Copy(out, f.elements)
	return out
}

var errClosed = errors.New("dnatmaptest: fake closed")

// begin takes the lock and decides whether the call reaches the kernel.
func (f *Fake) begin(ctx context.Context) error {
	f.mu.Lock()
	if f.closed {
		return errClosed
	}
	if err := f.failNext; err != nil {
		f.failNext = nil
		return err
	}
	return ctx.Err()
}

// Read is dnatmap.Kernel.Read.
func (f *Fake) Read(ctx context.Context, l dnatmap.Layout) (dnatmap.State, error) {
	defer f.mu.Unlock()
	if err := f.begin(ctx); err != nil {
		return dnatmap.State{}, fmt.Errorf("dnatmaptest: read: %w", err)
	}
	st := dnatmap.State{Current: f.present && f.layout == l, Elements: f.copyElements()}
	if f.present {
		st.Layout = f.layout
	}
	return st, nil
}

// Ensure is dnatmap.Kernel.Ensure.
func (f *Fake) Ensure(ctx context.Context, l dnatmap.Layout) (map[uint16]netip.AddrPort, error) {
	defer f.mu.Unlock()
	if err := f.begin(ctx); err != nil {
		return nil, fmt.Errorf("dnatmaptest: ensure: %w", err)
	}
	if !l.Public.Is4() {
		return nil, fmt.Errorf("dnatmaptest: ensure: public address %s is not IPv4", l.Public)
	}
	if err := l.Ports.Validate(); err != nil {
		return nil, fmt.Errorf("dnatmaptest: ensure: %w", err)
	}
	if !f.present || f.layout != l {
		f.calls.Ensures++
		if !f.present {
			f.elements = map[uint16]netip.AddrPort{}
		}
		f.present, f.layout = true, l
	}
	return f.copyElements(), nil
}

// Apply is dnatmap.Kernel.Apply.
func (f *Fake) Apply(ctx context.Context, c dnatmap.Change) error {
	if c.Len() == 0 {
		return nil
	}
	defer f.mu.Unlock()
	if err := f.begin(ctx); err != nil {
		return fmt.Errorf("dnatmaptest: apply %d deletes and %d sets: %w", len(c.Delete), len(c.Set), err)
	}
	for port, backend := range c.Set {
		if !backend.Addr().Unmap().Is4() {
			return fmt.Errorf("dnatmaptest: apply %d deletes and %d sets: port %d: backend %s is not IPv4", len(c.Delete), len(c.Set), port, backend)
		}
	}
	f.calls.Applies++
	if err := f.check(c); err != nil {
		f.calls.Refused++
		return fmt.Errorf("dnatmaptest: apply %d deletes and %d sets: %w", len(c.Delete), len(c.Set), err)
	}
	for _, port := range c.Delete {
		delete(f.elements, port)
	}
	for port, backend := range c.Set {
		f.elements[port] = netip.AddrPortFrom(backend.Addr().Unmap(), backend.Port())
	}
	f.calls.Deletes += len(c.Delete)
	f.calls.Sets += len(c.Set)
	f.applied = append(f.applied, dnatmap.Change{Delete: slices.Clone(c.Delete), Set: maps.Clone(c.Set)})
	return nil
}

// check is the kernel's verdict on c: the deletes go first, each of a present port (so no
// port twice), then each set port must be absent.
func (f *Fake) check(c dnatmap.Change) error {
	if !f.present {
		return fmt.Errorf("no table %s: %w", dnatmap.Table, syscall.ENOENT)
	}
	deleted := make(map[uint16]bool, len(c.Delete))
	for _, port := range c.Delete {
		if _, ok := f.elements[port]; !ok || deleted[port] {
			return fmt.Errorf("delete port %d: not in the map: %w", port, syscall.ENOENT)
		}
		deleted[port] = true
	}
	for port := range c.Set {
		if _, ok := f.elements[port]; ok && !deleted[port] {
			return fmt.Errorf("set port %d: already in the map: %w", port, syscall.EEXIST)
		}
	}
	return nil
}

// Remove is dnatmap.Kernel.Remove.
func (f *Fake) Remove(ctx context.Context) error {
	defer f.mu.Unlock()
	if err := f.begin(ctx); err != nil {
		return fmt.Errorf("dnatmaptest: remove: %w", err)
	}
	if f.present {
		f.calls.Removes++
	}
	f.present = false
	f.elements = nil
	return nil
}

// Close is dnatmap.Kernel.Close: later calls fail, hooks and Elements still work.
func (f *Fake) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}
