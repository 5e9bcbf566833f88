// Package portalloc hands out public UDP ports from a fixed range, one per media backend of a
// route, and keeps released ports in quarantine before they are handed out again, so that a
// client still sending to an old port never reaches the next session. It does no I/O: time comes
// from an injected clock.
package portalloc

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrExhausted reports that every port of the range is allocated or in quarantine.
var ErrExhausted = errors.New("public port range exhausted")

// Range is an inclusive range of ports.
type Range struct {
	First, Last uint16
}

// ParseRange reads "first-last" (inclusive), e.g. "10500-20000"; a single port "n" is a range of one.
func ParseRange(s string) (Range, error) {
	lo, hi, found := strings.Cut(strings.TrimSpace(s), "-")
	if !found {
		hi = lo
	}
	first, err := parsePort(lo)
	if err != nil {
		return Range{}, fmt.Errorf("port range %q: %w", s, err)
	}
	last, err := parsePort(hi)
	if err != nil {
		return Range{}, fmt.Errorf("port range %q: %w", s, err)
	}
	r := Range{First: first, Last: last}
	if err := r.Validate(); err != nil {
		return Range{}, fmt.Errorf("port range %q: %w", s, err)
	}
	return r, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a port (1-65535)", s)
	}
	return uint16(n), nil
}

// Validate reports a range that is empty or starts at port 0.
func (r Range) Validate() error {
	if r.First == 0 {
		return errors.New("port 0 is not usable")
	}
	if r.First > r.Last {
		return fmt.Errorf("first port %d is above last port %d", r.First, r.Last)
	}
	return nil
}

// Size is the number of ports in the range.
func (r Range) Size() int { return int(r.Last) - int(r.First) + 1 }

// Contains reports whether port lies in the range.
func (r Range) Contains(port uint16) bool { return port >= r.First && port <= r.Last }

// String formats the range as ParseRange reads it.
func (r Range) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

type portState uint8

const (
	stateFree portState = iota
	stateAllocated
	stateQuarantined
)

type slot struct {
	state portState
	// owner is the key holding the port, or the key that last held it while it rests in
	// quarantine ("" when the port was found in the kernel with no known owner).
	owner string
	until time.Time
	// fresh is set while the port is held by a key that got it from the round-robin: neither
	// as a preferred port nor back from its own quarantine, so the key's clients have not been
	// told the port before.
	fresh bool
}

type quarantined struct {
	port  uint16
	until time.Time
}

// Allocator hands out ports of one range. It is not safe for concurrent use.
type Allocator struct {
	rng        Range
	quarantine time.Duration
	now        func() time.Time

	slots []slot
	keys  map[string][]uint16
	// queue holds quarantined ports in the order they entered quarantine; with one fixed
	// quarantine duration that is also the order they leave it.
	queue  []quarantined
	free   int
	cursor int
	// rested holds the ports each key released while they rest in quarantine: a key that comes
	// back in the meantime (its lease lapsed while NATS was away) gets them again, so its clients'
	// media still reaches it.
	rested map[string][]uint16
}

// New returns an allocator over r in which released ports rest for quarantine before reuse.
func New(r Range, quarantine time.Duration, now func() time.Time) (*Allocator, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("port range %s: %w", r, err)
	}
	if quarantine < 0 {
		return nil, fmt.Errorf("port quarantine %s is negative", quarantine)
	}
	if now == nil {
		now = time.Now
	}
	return &Allocator{
		rng:        r,
		quarantine: quarantine,
		now:        now,
		slots:      make([]slot, r.Size()),
		keys:       make(map[string][]uint16),
		rested:     make(map[string][]uint16),
		free:       r.Size(),
	}, nil
}

// Range is the allocator's port range.
func (a *Allocator) Range() Range { return a.rng }

// Ports returns the ports key holds, nil when it holds none.
func (a *Allocator) Ports(key string) []uint16 {
	return append([]uint16(nil), a.keys[key]...)
}

// Allocate returns n ports for key. Ports key already holds are kept, in order (extra ones go to
// quarantine when n shrinks); new ones are taken from preferred[i] for index i when that port
// is in range and neither held by another key nor quarantined after another key used it, else
// the port key itself released at index i while it still rests in quarantine, else
// from the range in round-robin order so that freed ports are reused as late as possible. When
// the range cannot supply them all, key keeps what it held before and the error wraps
// ErrExhausted.
func (a *Allocator) Allocate(key string, n int, preferred []uint16) ([]uint16, error) {
	if n < 0 {
		return nil, fmt.Errorf("allocate %d ports for %q: negative count", n, key)
	}
	a.expire()
	held := a.keys[key]
	if len(held) >= n {
		for _, p := range held[n:] {
			a.toQuarantine(p, key)
		}
		if n == 0 {
			delete(a.keys, key)
			return nil, nil
		}
		ports := append([]uint16(nil), held[:n]...)
		a.keys[key] = ports
		return append([]uint16(nil), ports...), nil
	}

	ports := append(make([]uint16, 0, n), held...)
	undo := make([]claimed, 0, n-len(held))
	for i := len(held); i < n; i++ {
		c, ok := a.claimPreferred(key, preferred, i)
		if !ok {
			c, ok = a.claimPreferred(key, a.rested[key], i)
		}
		if !ok {
			c, ok = a.claimNext(key)
		}
		if !ok {
			for j := len(undo) - 1; j >= 0; j-- {
				a.unclaim(undo[j])
			}
			return nil, fmt.Errorf("allocate %d ports for %q (%d free of %d): %w",
				n, key, a.free, a.rng.Size(), ErrExhausted)
		}
		undo = append(undo, c)
		ports = append(ports, c.port)
	}
	a.keys[key] = ports
	delete(a.rested, key)
	return append([]uint16(nil), ports...), nil
}

// Release puts every port key holds in quarantine.
func (a *Allocator) Release(key string) {
	a.expire()
	held := a.keys[key]
	for _, p := range held {
		a.toQuarantine(p, key)
	}
	delete(a.keys, key)
	if a.quarantine > 0 && len(held) > 0 {
		a.rested[key] = held
	}
}

// Reserve puts a port that is in use without a known owner (found programmed in the kernel
// after a restart) in quarantine, unless a key holds it. A later Allocate may still claim it
// as a preferred port.
func (a *Allocator) Reserve(port uint16) {
	if !a.rng.Contains(port) {
		return
	}
	a.expire()
	if a.slot(port).state != stateFree {
		return
	}
	a.toQuarantine(port, "")
}

// Capacity reports the size of the range and how many ports can be allocated now.
func (a *Allocator) Capacity() (total, free int) {
	a.expire()
	return a.rng.Size(), a.free
}

// Usage counts the ports held by a key, those resting in quarantine and those free. It walks the
// range: it is for metrics scrapes, not for the allocation path.
func (a *Allocator) Usage() (inUse, quarantined, free int) {
	a.expire()
	for i := range a.slots {
		switch a.slots[i].state {
		case stateAllocated:
			inUse++
		case stateQuarantined:
			quarantined++
		default:
			free++
		}
	}
	return inUse, quarantined, free
}

// Fresh reports whether port is held by a key that took it from the round-robin rather than as
// a preferred port or back from its own quarantine: nobody has been told the port for that key
// before it was handed out.
func (a *Allocator) Fresh(port uint16) bool {
	if !a.rng.Contains(port) {
		return false
	}
	s := a.slot(port)
	return s.state == stateAllocated && s.fresh
}

func (a *Allocator) slot(port uint16) *slot { return &a.slots[int(port)-int(a.rng.First)] }

// claimed remembers what a port was before Allocate claimed it, so a failed Allocate can
// put it back.
type claimed struct {
	port uint16
	was  slot
}

func (a *Allocator) claimPreferred(key string, preferred []uint16, i int) (claimed, bool) {
	if i >= len(preferred) || !a.rng.Contains(preferred[i]) {
		return claimed{}, false
	}
	p := preferred[i]
	s := a.slot(p)
	switch s.state {
	case stateFree:
	case stateQuarantined:
		if s.owner != "" && s.owner != key {
			return claimed{}, false
		}
	default:
		return claimed{}, false
	}
	return a.claim(p, key), true
}

func (a *Allocator) claimNext(key string) (claimed, bool) {
	if a.free == 0 {
		return claimed{}, false
	}
	size := a.rng.Size()
	for i := 0; i < size; i++ {
		idx := (a.cursor + i) % size
		if a.slots[idx].state == stateFree {
			a.cursor = (idx + 1) % size
			c := a.claim(uint16(int(a.rng.First)+idx), key)
			a.slots[idx].fresh = true
			return c, true
		}
	}
	return claimed{}, false
}

func (a *Allocator) claim(port uint16, key string) claimed {
	s := a.slot(port)
	c := claimed{port: port, was: *s}
	if s.state == stateFree {
		a.free--
	}
	*s = slot{state: stateAllocated, owner: key}
	return c
}

// unclaim restores a port claimed by a failed Allocate; its quarantine queue entry, if any, is
// still in place and matches the restored state.
func (a *Allocator) unclaim(c claimed) {
	*a.slot(c.port) = c.was
	if c.was.state == stateFree {
		a.free++
	}
}

func (a *Allocator) toQuarantine(port uint16, owner string) {
	s := a.slot(port)
	if s.state == stateFree {
		a.free--
	}
	if a.quarantine == 0 {
		*s = slot{}
		a.free++
		return
	}
	until := a.now().Add(a.quarantine)
	*s = slot{state: stateQuarantined, owner: owner, until: until}
	a.queue = append(a.queue, quarantined{port: port, until: until})
}

func (a *Allocator) expire() {
	now := a.now()
	n := 0
	for n < len(a.queue) && !a.queue[n].until.After(now) {
		q := a.queue[n]
		s := a.slot(q.port)
		// A port claimed back as preferred, or quarantined again later, has a newer state
		// than this queue entry; only the entry matching the slot frees it.
		if s.state == stateQuarantined && s.until.Equal(q.until) {
			// The owner may have released other ports since, which still rest.
			if slices.Contains(a.rested[s.owner], q.port) {
				delete(a.rested, s.owner)
			}
			*s = slot{}
			a.free++
		}
		n++
	}
	if n > 0 {
		a.queue = append(a.queue[:0], a.queue[n:]...)
	}
}
