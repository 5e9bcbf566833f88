// Package dnatmap keeps the media plane's DNAT in the kernel as one nftables map: public UDP
// port → backend address and port, looked up by one rule in each of two nat chains of livegate's
// own table. Adding, re-pointing or deleting a port changes one map element in a transaction on a
// netlink socket that stays open, so no change waits for the kernel to release deleted rules (the
// close of a netfilter socket after a delete does: one RCU grace period).
//
//	table ip livegate {
//		map media {
//			type inet_service : ipv4_addr . inet_service
//			size 65536
//		}
//		chain prerouting {
//			type nat hook prerouting priority dstnat - 10; policy accept;
//			ip daddr 198.18.1.1 udp dport 10500-20000 dnat ip to udp dport map @media
//		}
//		chain output {
//			type nat hook output priority -110; policy accept;
//			ip daddr 198.18.1.1 udp dport 10500-20000 dnat ip to udp dport map @media
//		}
//	}
//
// That is `nft list table ip livegate` of a new table: both chains have priority Priority, which
// nft names after dstnat only in prerouting.
package dnatmap

import (
	"net/netip"

	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
)

// Names in the kernel. The table is in the ip (IPv4) family.
const (
	Table           = "livegate"
	Map             = "media"
	ChainPrerouting = "prerouting"
	ChainOutput     = "output"
)

// Priority is the nat chains' hook priority: ahead of iptables' nat chains (dstnat, -100), so
// a host's own DNAT rules cannot take a public port's first packet from livegate.
const Priority = -110

// Layout is what the chains' rule matches: UDP to Public on a port within Ports.
type Layout struct {
	Public netip.Addr
	Ports  portalloc.Range
}

// State is what Read found.
type State struct {
	// Current reports whether the table, the map and both chains exist and each chain holds
	// exactly the rule for the layout Read was given.
	Current bool
	// Layout is what the prerouting chain's rule matches, when it has the shape this package
	// writes; zero otherwise.
	Layout Layout
	// Elements is the map's content, public port → backend; empty when there is no map.
	Elements map[uint16]netip.AddrPort
}

// Change is one transaction on the map. Delete goes first, so a port in both Delete and Set is
// re-pointed atomically. The kernel refuses the whole transaction when a deleted port is not in
// the map or a set port already is.
type Change struct {
	Delete []uint16
	Set    map[uint16]netip.AddrPort
}

// Len is the number of element operations in c.
func (c Change) Len() int { return len(c.Delete) + len(c.Set) }
