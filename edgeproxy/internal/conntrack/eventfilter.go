package conntrack

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

const (
	// eventHeader is the netlink and nfnetlink headers before an event's attributes.
	eventHeader = unix.NLMSG_HDRLEN + nl.SizeofNfgenmsg
	// attrHeader is a netlink attribute's header before its payload.
	attrHeader = unix.SizeofNlAttr
)

// eventFilter is a socket filter that lets through only the events of UDP flows whose original
// destination is addr. On a host whose other traffic makes many flows (a Kubernetes node, say)
// every other event is dropped in the kernel: it costs no read and no parse, and cannot fill
// the socket's buffer, whose overflow would make the cleaner read the whole table again.
func eventFilter(addr netip.Addr) ([]bpf.RawInstruction, error) {
	if !addr.Is4() {
		return nil, fmt.Errorf("event filter: %s is not an IPv4 address", addr)
	}
	const (
		accept = 0xffff_ffff
		reject = 0
		// orig is the scratch slot holding the offset of CTA_TUPLE_ORIG.
		orig = 0
		// toReject marks a jump to the rejection at the end, resolved once the program is whole.
		toReject = 0xff
	)
	a4 := addr.As4()
	// find loads into A the offset of attribute typ: at the top level, or nested in the
	// attribute whose offset A holds. It rejects the event when there is none.
	find := func(typ uint32, nested bool) []bpf.Instruction {
		ext := bpf.ExtNetlinkAttr
		if nested {
			ext = bpf.ExtNetlinkAttrNested
		}
		return []bpf.Instruction{
			bpf.LoadConstant{Dst: bpf.RegX, Val: typ},
			bpf.LoadExtension{Num: ext},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: toReject},
		}
	}
	var prog []bpf.Instruction
	prog = append(prog, bpf.LoadConstant{Dst: bpf.RegA, Val: eventHeader})
	prog = append(prog, find(nl.CTA_TUPLE_ORIG, false)...)
	prog = append(prog, bpf.StoreScratch{Src: bpf.RegA, N: orig})
	prog = append(prog, find(nl.CTA_TUPLE_PROTO, true)...)
	prog = append(prog, find(ctaProtoNum, true)...)
	prog = append(prog,
		bpf.TAX{},
		bpf.LoadIndirect{Off: attrHeader, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.IPPROTO_UDP, SkipTrue: toReject},
		bpf.LoadScratch{Dst: bpf.RegA, N: orig},
	)
	prog = append(prog, find(nl.CTA_TUPLE_IP, true)...)
	prog = append(prog, find(ctaIPv4Dst, true)...)
	prog = append(prog,
		bpf.TAX{},
		bpf.LoadIndirect{Off: attrHeader, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: binary.BigEndian.Uint32(a4[:]), SkipTrue: toReject},
		bpf.RetConstant{Val: accept},
		bpf.RetConstant{Val: reject},
	)
	last := len(prog) - 1
	for i, ins := range prog {
		if j, ok := ins.(bpf.JumpIf); ok && j.SkipTrue == toReject {
			j.SkipTrue = uint8(last - i - 1)
			prog[i] = j
		}
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, fmt.Errorf("event filter: %w", err)
	}
	return raw, nil
}
