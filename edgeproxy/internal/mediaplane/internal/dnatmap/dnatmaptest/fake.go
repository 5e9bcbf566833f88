// Package dnatmaptest is an in-memory DNAT map with the kernel's semantics, for unit tests of
// what drives dnatmap.Kernel.
package dnatmaptest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"sync"

	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/internal/dnatmap"
)

// ErrRefused is what Apply returns for a change the kernel would refuse.
var ErrRefused = errors.New("dnatmaptest: transaction refused")

// Fake is one namespace's table. The zero value is not usable; call New.
type Fake struct {
	mu       sync.Mutex
	present  bool
	layout   dnatmap.Layout
	elements map[uint16]netip.AddrPort
	failNext error
	applied  []dnatmap.Change
	ensures  int
	closed   bool
}

// New returns a namespace without livegate's table.
func New() *Fake { return &Fake{elements: map[uint16]netip.AddrPort{}} }

// Read implements mediaplane.DNATMap.
func (f *Fake) Read(_ context.Context, l dnatmap.Layout) (dnatmap.State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail(); err != nil {
		return dnatmap.State{}, err
	}
	st := dnatmap.State{Elements: maps.Clone(f.elements)}
	if f.present {
		st.Layout = f.layout
		st.Current = f.layout == l
	}
	return st, nil
}

// Ensure implements mediaplane.DNATMap.
func (f *Fake) Ensure(_ context.Context, l dnatmap.Layout) (map[uint16]netip.AddrPort, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail(); err != nil {
		return nil, err
	}
	if !f.present || f.layout != l {
		f.ensures++
	}
	f.present, f.layout = true, l
	return maps.Clone(f.elements), nil
}

// Apply implements mediaplane.DNATMap: the whole change or nothing, as the kernel does.
func (f *Fake) Apply(_ context.Context, c dnatmap.Change) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail(); err != nil {
		return err
	}
	if c.Len() == 0 {
		return nil
	}
	if !f.present {
		return fmt.Errorf("%w: no table", ErrRefused)
	}
	next := maps.Clone(f.elements)
	for _, port := range c.Delete {
		if _, ok := next[port]; !ok {
			return fmt.Errorf("%w: delete %d: no such element", ErrRefused, port)
		}
		delete(next, port)
	}
	for port, backend := range c.Set {
		if _, ok := next[port]; ok {
			return fmt.Errorf("%w: add %d: element exists", ErrRefused, port)
		}
		next[port] = backend
	}
	f.elements = next
	f.applied = append(f.applied, dnatmap.Change{Delete: append([]uint16(nil), c.Delete...), Set: maps.Clone(c.Set)})
	return nil
}

// Remove implements mediaplane.DNATMap.
func (f *Fake) Remove(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail(); err != nil {
		return err
	}
	f.present, f.layout = false, dnatmap.Layout{}
	clear(f.elements)
	return nil
}

// Close implements mediaplane.DNATMap; the table stays, as the kernel's would.
func (f *Fake) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

func (f *Fake) fail() error {
	err := f.failNext
	f.failNext = nil
	return err
}

// FailNext makes the next call return err and change nothing.
func (f *Fake) FailNext(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = err
}

// Drop removes the table behind the driver's back, as `nft flush ruleset` would.
func (f *Fake) Drop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.present = false
	clear(f.elements)
}

// SetElement and DeleteElement change the map behind the driver's back.
func (f *Fake) SetElement(port uint16, backend netip.AddrPort) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.elements[port] = backend
}

// DeleteElement removes one element behind the driver's back.
func (f *Fake) DeleteElement(port uint16) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.elements, port)
}

// Elements returns a copy of the map.
func (f *Fake) Elements() map[uint16]netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.elements)
}

// Present reports whether the table exists, and its layout.
func (f *Fake) Present() (bool, dnatmap.Layout) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.present, f.layout
}

// Applied returns every change Apply accepted, oldest first.
func (f *Fake) Applied() []dnatmap.Change {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]dnatmap.Change(nil), f.applied...)
}

// Ensures counts the Ensure calls that wrote the layout.
func (f *Fake) Ensures() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ensures
}

// Closed reports whether Close was called.
func (f *Fake) Closed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}
