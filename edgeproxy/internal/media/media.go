// Package media is the contract between the edge's reconciler and its media data plane (public UDP
// ports DNATed to media backends). The reconciler calls it; package mediaplane implements it over
// the kernel; Off stands in when the edge runs without media (--media=off).
package media

import (
	"context"
	"net/netip"
)

// Mapping forwards one public UDP port to one media backend.
type Mapping struct {
	PublicPort uint16
	Backend    netip.AddrPort
}

// Plane allocates public ports and holds the kernel's forwarding in line with them. Keys are route
// keys (instance ids). The reconciler never calls it from two goroutines at once, though Sync may
// run on another goroutine than the other methods.
type Plane interface {
	// Assign returns one public UDP port per backend, index-aligned, keeping the ports already held
	// by key, else the preferred ones (recovered from livegate_endpoints after a restart) where
	// they are free. Calling it again with the same arguments returns the same ports.
	Assign(key string, backends []netip.AddrPort, preferred []uint16) ([]uint16, error)
	// Release gives back key's ports (they rest in quarantine before reuse).
	Release(key string)
	// Sync makes the kernel hold exactly these mappings (the full desired state, by key), and
	// drops the conntrack entries of mappings it removes, possibly after it returns.
	Sync(ctx context.Context, want map[string][]Mapping) error
	// Settle waits for the work Sync left running, and reports what of it failed.
	Settle(ctx context.Context) error
	// Capacity reports the size of the public port range and how many ports are free.
	Capacity() (total, free int)
}

// Off is the media plane of an edge that forwards signaling only: it assigns no ports.
type Off struct{}

// Assign returns no ports.
func (Off) Assign(string, []netip.AddrPort, []uint16) ([]uint16, error) { return nil, nil }

// Release does nothing.
func (Off) Release(string) {}

// Sync does nothing.
func (Off) Sync(context.Context, map[string][]Mapping) error { return nil }

// Settle does nothing.
func (Off) Settle(context.Context) error { return nil }

// Capacity reports no ports.
func (Off) Capacity() (total, free int) { return 0, 0 }
