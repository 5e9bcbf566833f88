package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/livegate/livegate/e2e/internal/netns"
)

// The edge's DNAT in the kernel: one nftables map, public UDP port → backend address and port,
// that the nat chains of its own table look packets up in.
const (
	dnatTable = "livegate"
	dnatMap   = "media"
	// dnatKeyType and dnatDataType are the map's declared types as nft prints them: a map of
	// other types is another layout, which the reader refuses rather than misreads.
	dnatKeyType  = "inet_service"
	dnatDataType = "ipv4_addr . inet_service"
)

// DNATMap reads the edge's DNAT map in ns (map media of table ip livegate): public port →
// backend. No table means no mapping, not an error: the edge may not have started, or its table
// was cleaned up.
func DNATMap(ctx context.Context, ns *netns.Namespace) (map[int]netip.AddrPort, error) {
	args := []string{"-j", "list", "map", "ip", dnatTable, dnatMap}
	cmd := ns.Command(ctx, "nft", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if nftMissing(stderr.String()) {
			return map[int]netip.AddrPort{}, nil
		}
		return nil, fmt.Errorf("nft %s in %s: %w: %s", strings.Join(args, " "), ns.Name, err, strings.TrimSpace(stderr.String()))
	}
	m, err := parseDNATMap(out)
	if err != nil {
		return nil, fmt.Errorf("map %s of table ip %s in %s: %w", dnatMap, dnatTable, ns.Name, err)
	}
	return m, nil
}

// nftMissing reports whether nft's standard error says that the table or the map it was asked to
// list does not exist (ENOENT: nft says the same for both). `ip netns exec` and a failed exec say
// "No such file or directory" too, but not as nft's "Error:" line.
func nftMissing(stderr string) bool {
	for _, line := range strings.Split(stderr, "\n") {
		if strings.HasPrefix(line, "Error: No such file or directory") {
			return true
		}
	}
	return false
}

// parseDNATMap reads the output of `nft -j list map` for the DNAT map. An element is
// [public port, {"concat": [backend address, backend port]}], the numbers as numbers (nft names
// services only when asked to, with -S).
func parseDNATMap(out []byte) (map[int]netip.AddrPort, error) {
	var doc struct {
		Nftables []struct {
			Map *struct {
				Type string            `json:"type"`
				Data string            `json:"map"`
				Elem []json.RawMessage `json:"elem"`
			} `json:"map"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("nft's JSON: %w", err)
	}
	var found bool
	m := map[int]netip.AddrPort{}
	for _, obj := range doc.Nftables {
		if obj.Map == nil {
			continue
		}
		if found {
			return nil, errors.New("nft listed more than one map")
		}
		found = true
		if obj.Map.Type != dnatKeyType || obj.Map.Data != dnatDataType {
			return nil, fmt.Errorf("type %s : %s, want %s : %s", obj.Map.Type, obj.Map.Data, dnatKeyType, dnatDataType)
		}
		for _, raw := range obj.Map.Elem {
			port, backend, err := parseDNATElem(raw)
			if err != nil {
				return nil, fmt.Errorf("element %s: %w", raw, err)
			}
			m[port] = backend
		}
	}
	if !found {
		return nil, errors.New("nft listed no map")
	}
	return m, nil
}

// parseDNATElem reads one element of the map.
func parseDNATElem(raw json.RawMessage) (int, netip.AddrPort, error) {
	var pair []json.RawMessage
	var data struct {
		Concat []json.RawMessage `json:"concat"`
	}
	var public, port uint16
	var addr string
	if json.Unmarshal(raw, &pair) != nil || len(pair) != 2 || json.Unmarshal(pair[0], &public) != nil ||
		json.Unmarshal(pair[1], &data) != nil || len(data.Concat) != 2 ||
		json.Unmarshal(data.Concat[0], &addr) != nil || json.Unmarshal(data.Concat[1], &port) != nil {
		return 0, netip.AddrPort{}, errors.New(`not [port, {"concat": [address, port]}]`)
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil || !ip.Is4() || public == 0 || port == 0 {
		return 0, netip.AddrPort{}, errors.New("not a public port and an IPv4 backend")
	}
	return int(public), netip.AddrPortFrom(ip, port), nil
}

// Conntrack counts the UDP conntrack entries in ns addressed to a public port; only those DNATed
// to a backend when translated.
func Conntrack(ctx context.Context, ns *netns.Namespace, port int, translated bool) (int, error) {
	args := []string{"-L", "-p", "udp", "--orig-port-dst", strconv.Itoa(port)}
	if translated {
		args = append(args, "--dst-nat")
	}
	out, err := ns.Output(ctx, "conntrack", args...)
	if err != nil {
		return 0, err
	}
	return strings.Count(out, "udp "), nil
}

// ForwardedConntrack counts the UDP conntrack entries in ns that the kernel translates to a
// backend, per public port in first..last. A packet sent to a port without a rule leaves an entry
// of its own that is not translated and leads nowhere; it is not counted.
func ForwardedConntrack(ctx context.Context, ns *netns.Namespace, first, last int) (map[int]int, error) {
	out, err := ns.Output(ctx, "conntrack", "-L", "-p", "udp")
	if err != nil {
		return nil, err
	}
	ports := map[int]int{}
	for _, line := range strings.Split(out, "\n") {
		// Original direction first, then the reply: "dst=PUBLIC ... dport=PORT ... src=BACKEND".
		var dsts, srcs []string
		var dport string
		for _, f := range strings.Fields(line) {
			switch k, v, _ := strings.Cut(f, "="); k {
			case "dst":
				dsts = append(dsts, v)
			case "src":
				srcs = append(srcs, v)
			case "dport":
				if dport == "" {
					dport = v
				}
			}
		}
		p, err := strconv.Atoi(dport)
		if err != nil || p < first || p > last || len(dsts) < 1 || len(srcs) < 2 || srcs[1] == dsts[0] {
			continue
		}
		ports[p]++
	}
	return ports, nil
}
