// Package procstat reads a process's resident memory and CPU time from /proc.
package procstat

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, 100 on every Linux architecture Go supports.
const clockTick = 100

// Memory is the resident set now and its peak, in bytes, and the resident set's split into
// anonymous memory (heap, stacks) and file-backed pages (the mapped binary, libraries).
type Memory struct {
	RSS, HWM      int64
	Anon, FileMap int64
}

// ReadMemory reads VmRSS and VmHWM of pid.
func ReadMemory(pid int) (Memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, fmt.Errorf("memory of pid %d: %w", pid, err)
	}
	return parseStatus(string(b))
}

func parseStatus(s string) (Memory, error) {
	var m Memory
	found := 0
	for _, line := range strings.Split(s, "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok || (key != "VmRSS" && key != "VmHWM" && key != "RssAnon" && key != "RssFile") {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			return Memory{}, fmt.Errorf("unexpected %s line %q", key, line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("unexpected %s line %q: %w", key, line, err)
		}
		switch key {
		case "VmRSS":
			m.RSS = kb << 10
			found++
		case "VmHWM":
			m.HWM = kb << 10
			found++
		case "RssAnon":
			m.Anon = kb << 10
		case "RssFile":
			m.FileMap = kb << 10
		}
	}
	if found != 2 {
		return Memory{}, fmt.Errorf("VmRSS or VmHWM missing")
	}
	return m, nil
}

// ReadCPU is the user plus system CPU time pid has used.
func ReadCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu of pid %d: %w", pid, err)
	}
	return parseStat(string(b))
}

func parseStat(s string) (time.Duration, error) {
	// The command name may hold spaces and parentheses; fields resume after the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected stat %q", s)
	}
	f := strings.Fields(s[i+1:])
	// utime and stime are fields 14 and 15 of stat; f[0] is field 3.
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected stat %q", s)
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("unexpected stat %q: %w", s, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTick, nil
}

// CPUShare measures the share of one core pid uses over d (1.0 = one core busy).
func CPUShare(pid int, d time.Duration) (float64, error) {
	a, err := ReadCPU(pid)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	time.Sleep(d)
	b, err := ReadCPU(pid)
	if err != nil {
		return 0, err
	}
	return float64(b-a) / float64(time.Since(start)), nil
}
