package stack

import (
	"context"
	"strconv"
	"strings"

	"github.com/livegate/livegate/e2e/internal/netns"
)

// DNATRules counts the edge's DNAT rules in ns that packets reach (those in its LIVEGATE-DNAT-
// shard chains) per public port. A port's first rule in its shard decides: the edge ends a port
// by inserting a tombstone (-j RETURN) ahead of its DNAT rule and re-points one by inserting the
// new rule ahead of the old, and deletes the rules so shadowed later, in a sweep.
func DNATRules(ctx context.Context, ns *netns.Namespace) (map[int]int, error) {
	out, err := ns.Output(ctx, "iptables-save", "-t", "nat")
	if err != nil {
		return nil, err
	}
	ports := map[int]int{}
	decided := map[int]bool{}
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "-A LIVEGATE-DNAT-") {
			continue
		}
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] != "--dport" {
				continue
			}
			p, err := strconv.Atoi(f[i+1])
			if err != nil || decided[p] {
				break
			}
			decided[p] = true
			if strings.Contains(line, "-j DNAT") {
				ports[p]++
			}
			break
		}
	}
	return ports, nil
}

// Total is the number of rules or entries of a per-port count.
func Total(perPort map[int]int) int {
	n := 0
	for _, c := range perPort {
		n += c
	}
	return n
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
