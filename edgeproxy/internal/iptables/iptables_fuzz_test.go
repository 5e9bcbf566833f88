package iptables

import (
	"slices"
	"strings"
	"testing"
)

// FuzzQuoteSplit renders any word as Quote does for a restore line and reads it back as
// iptables-restore does (Split): a word without a line break comes back unchanged and as one
// word, so no comment or other quoted value can add an option to a rule.
func FuzzQuoteSplit(f *testing.F) {
	for _, s := range []string{"livegate media DNAT", "lg:10500", "", " ", `"`, `\`, `a\" -j ACCEPT`, `x" -j ACCEPT "`,
		"--to-destination 1.2.3.4", "$(reboot)", "`id`", "a|b&c;d#e", "\t", "\xff\xfe", "sessi\u043en", "a\u00a0b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, word string) {
		if strings.ContainsAny(word, "\r\n\x00") {
			return
		}
		q := Quote(word)
		got, err := Split("-m comment --comment " + q + " -j ACCEPT")
		if err != nil {
			t.Fatalf("Quote(%q) = %s, which does not split: %v", word, q, err)
		}
		want := []string{"-m", "comment", "--comment", word, "-j", "ACCEPT"}
		if !slices.Equal(got, want) {
			t.Fatalf("Quote(%q) = %s splits into %q", word, q, got)
		}
	})
}

// FuzzParseSave parses any iptables-save output. It never panics; a refusal names the line; a
// parsed rule's Args are its Spec split, and rendering the rule back as "-A <chain> <spec>" and
// parsing it again gives the same rule.
func FuzzParseSave(f *testing.F) {
	f.Add([]byte("# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:LIVEGATE-DNAT - [0:0]\n-A PREROUTING -m comment --comment \"livegate media DNAT\" -j LIVEGATE-DNAT\n-A LIVEGATE-DNAT-10496 -d 198.18.1.1/32 -p udp -m udp --dport 10500 -m comment --comment \"lg:10500\" -j DNAT --to-destination 198.19.2.2:30000\nCOMMIT\n"))
	f.Add([]byte("*filter\n:FORWARD DROP [1:2]\n-A FORWARD -m comment --comment \"a \\\" b\" -j ACCEPT\nCOMMIT\n"))
	f.Add([]byte("-A X y\n"))
	f.Add([]byte("*nat\n-A X \"unterminated\nCOMMIT\n"))
	f.Add([]byte("*nat\n:X\n"))
	f.Add([]byte("*nat\n-A\tX y\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := ParseSave(data)
		if err != nil {
			if msg := err.Error(); !strings.HasPrefix(msg, "iptables-save line ") && !strings.HasPrefix(msg, "read iptables-save output") {
				t.Fatalf("refusal %q does not name the line", msg)
			}
			return
		}
		for name, tbl := range rs.Tables {
			for _, r := range tbl.Rules {
				args, err := Split(r.Spec)
				if err != nil || !slices.Equal(args, r.Args) {
					t.Fatalf("table %s rule %q: Args %q, Split %q %v", name, r.Spec, r.Args, args, err)
				}
				again, err := ParseSave([]byte("*" + name + "\n-A " + r.Chain + " " + r.Spec + "\nCOMMIT\n"))
				if err != nil {
					t.Fatalf("rule %q does not parse again: %v", r.Spec, err)
				}
				rules := again.Table(name).Rules
				if len(rules) != 1 || rules[0].Chain != r.Chain || rules[0].Spec != r.Spec {
					t.Fatalf("rule %q of %s parsed again as %+v", r.Spec, r.Chain, rules)
				}
			}
		}
	})
}
