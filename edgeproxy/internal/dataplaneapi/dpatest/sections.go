package dpatest

import (
	"regexp"
	"sort"
	"strconv"
	"strings"
)

var (
	duration = regexp.MustCompile(`^([0-9]+)(ms|s|m|h)?$`)
	size     = regexp.MustCompile(`^([0-9]+)k$`)
	anyPort  = regexp.MustCompile(`^(server \S+ \S+):0$`)
)

// Sections reads HAProxy configuration text into its frontend and backend sections for
// comparison: comments and blank lines dropped, spaces collapsed, durations in milliseconds,
// stick table sizes without suffix, "server x addr:0" as "server x addr" (the same thing),
// other lines sorted and http-request/http-response rules kept in their order.
func Sections(text string) map[string][]string {
	out := map[string][]string{}
	var (
		name         string
		other, rules []string
	)
	flush := func() {
		if name != "" {
			sort.Strings(other)
			out[name] = append(other, rules...)
		}
		other, rules = nil, nil
	}
	for line := range strings.SplitSeq(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "\t") {
			flush()
			name = ""
			if f[0] == "frontend" || f[0] == "backend" {
				name = strings.Join(f, " ")
			}
			continue
		}
		if f[0] == "timeout" || f[0] == "stick-table" {
			for i, w := range f {
				if m := duration.FindStringSubmatch(w); m != nil && i > 1 {
					f[i] = millis(m[1], m[2])
				}
				if m := size.FindStringSubmatch(w); m != nil {
					n, _ := strconv.Atoi(m[1])
					f[i] = strconv.Itoa(n * 1024)
				}
			}
		}
		l := anyPort.ReplaceAllString(strings.Join(f, " "), "$1")
		if f[0] == "http-request" || f[0] == "http-response" {
			rules = append(rules, l)
		} else {
			other = append(other, l)
		}
	}
	flush()
	return out
}

func millis(n, unit string) string {
	v, _ := strconv.Atoi(n)
	switch unit {
	case "s":
		v *= 1000
	case "m":
		v *= 60000
	case "h":
		v *= 3600000
	}
	return strconv.Itoa(v)
}
