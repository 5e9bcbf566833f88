// Package commalist reads the comma-separated lists of settings and headers ("a, b,,c"), the one
// way livegate splits them: items trimmed, blank ones dropped.
package commalist

import "strings"

// Split returns the items of s, trimmed, without blank ones; nil when there are none.
func Split(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
