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

// CPU is the user plus system CPU time a process has used itself, and that its descendants used:
// those it has waited for (short-lived helpers such as iptables-save) and, with ReadTreeCPU,
// those still running (a long-lived helper, the supervised HAProxy).
type CPU struct {
	Own, Children time.Duration
}

// ReadCPU reads pid's CPU times; Children holds only the children it has waited for.
func ReadCPU(pid int) (CPU, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return CPU{}, fmt.Errorf("cpu of pid %d: %w", pid, err)
	}
	c, _, err := parseStat(string(b))
	return c, err
}

// ReadTreeCPU reads pid's CPU times with the running descendants' added to Children. Counting
// the running ones too keeps a helper's CPU in the interval it was spent: a process waited for
// only adds its whole life to its parent's figures when it exits.
func ReadTreeCPU(pid int) (CPU, error) {
	root, err := ReadCPU(pid)
	if err != nil {
		return CPU{}, err
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return CPU{}, fmt.Errorf("list processes: %w", err)
	}
	type proc struct {
		ppid int
		cpu  CPU
	}
	procs := map[int]proc{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		c, ppid, err := parseStat(string(b))
		if err != nil {
			continue
		}
		procs[p] = proc{ppid: ppid, cpu: c}
	}
	in := map[int]bool{pid: true}
	for changed := true; changed; {
		changed = false
		for p, pr := range procs {
			if !in[p] && in[pr.ppid] {
				in[p] = true
				root.Children += pr.cpu.Own + pr.cpu.Children
				changed = true
			}
		}
	}
	return root, nil
}

func parseStat(s string) (CPU, int, error) {
	// The command name may hold spaces and parentheses; fields resume after the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return CPU{}, 0, fmt.Errorf("unexpected stat %q", s)
	}
	f := strings.Fields(s[i+1:])
	// ppid is field 4; utime, stime, cutime and cstime are fields 14 to 17 of stat; f[0] is
	// field 3.
	if len(f) < 15 {
		return CPU{}, 0, fmt.Errorf("unexpected stat %q", s)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return CPU{}, 0, fmt.Errorf("unexpected stat %q: %w", s, err)
	}
	var ticks [4]int64
	for j, v := range f[11:15] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return CPU{}, 0, fmt.Errorf("unexpected stat %q: %w", s, err)
		}
		ticks[j] = n
	}
	return CPU{
		Own:      time.Duration(ticks[0]+ticks[1]) * time.Second / clockTick,
		Children: time.Duration(ticks[2]+ticks[3]) * time.Second / clockTick,
	}, ppid, nil
}

// CPUShare measures the share of one core pid uses over d (1.0 = one core busy), by itself and
// in its descendants, running or waited for.
func CPUShare(pid int, d time.Duration) (own, children float64, err error) {
	a, err := ReadTreeCPU(pid)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	time.Sleep(d)
	b, err := ReadTreeCPU(pid)
	if err != nil {
		return 0, 0, err
	}
	elapsed := float64(time.Since(start))
	return float64(b.Own-a.Own) / elapsed, float64(b.Children-a.Children) / elapsed, nil
}

// Children lists pid's running child processes.
func Children(pid int) []int {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil {
				out = append(out, p)
			}
		}
	}
	return out
}
