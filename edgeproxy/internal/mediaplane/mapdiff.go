package mediaplane

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/internal/dnatmap"
)

// mapPlan is the transaction that turns the map's elements into the wanted ones, and what it
// means for conntrack.
type mapPlan struct {
	change                  dnatmap.Change
	added, removed, updated int
	// flush lists the ports whose conntrack entries must go once the change is applied.
	flush []uint16
	// created holds the ports of flush that had no mapping of any kind before: neither an
	// element nor a legacy rule.
	created map[uint16]bool
}

// planMap computes the change from cur (the map's elements) to want. legacy holds what an
// earlier version's rules forward, which the same sync removes: a port whose legacy rule goes
// without an element taking its place is flushed like a removed one, and a port that gets the
// element of the backend its legacy rule had keeps its conntrack entries, which follow the same
// binding.
func planMap(cur, legacy, want map[uint16]netip.AddrPort) mapPlan {
	var p mapPlan
	set := map[uint16]netip.AddrPort{}
	flush := map[uint16]bool{}
	for port, backend := range cur {
		w, keep := want[port]
		if keep && w == backend {
			continue
		}
		p.change.Delete = append(p.change.Delete, port)
		flush[port] = true
		if keep {
			p.updated++
			set[port] = w
		} else {
			p.removed++
		}
	}
	for port, backend := range want {
		if _, had := cur[port]; had {
			continue
		}
		set[port] = backend
		p.added++
		old, wasLegacy := legacy[port]
		if wasLegacy && old == backend {
			continue
		}
		flush[port] = true
		if !wasLegacy {
			if p.created == nil {
				p.created = map[uint16]bool{}
			}
			p.created[port] = true
		}
	}
	for port := range legacy {
		if _, kept := want[port]; !kept {
			if _, inMap := cur[port]; !inMap {
				flush[port] = true
			}
		}
	}
	slices.Sort(p.change.Delete)
	if len(set) > 0 {
		p.change.Set = set
	}
	p.flush = slices.Sorted(maps.Keys(flush))
	return p
}
