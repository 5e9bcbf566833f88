package procstat

import (
	"os"
	"testing"
	"time"
)

func TestParseStatus(t *testing.T) {
	m, err := parseStatus("Name:\tx\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nRssAnon:\t    8192 kB\nRssFile:\t    2048 kB\nThreads: 3\n")
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS != 10<<20 || m.HWM != 20<<20 || m.Anon != 8<<20 || m.FileMap != 2<<20 {
		t.Fatalf("got %+v", m)
	}
	if _, err := parseStatus("Name:\tx\n"); err == nil {
		t.Fatal("missing fields accepted")
	}
}

func TestParseStat(t *testing.T) {
	// utime=150 stime=50 ticks: 2 s; cutime=30 cstime=20: 0.5 s.
	d, ppid, err := parseStat("42 (a (b) c) S 7 42 42 0 -1 4194560 100 0 0 0 150 50 30 20 20 0 1 0")
	if err != nil {
		t.Fatal(err)
	}
	if d.Own != 2*time.Second || d.Children != 500*time.Millisecond || ppid != 7 {
		t.Fatalf("got %+v, ppid %d", d, ppid)
	}
	if _, _, err := parseStat("garbage"); err == nil {
		t.Fatal("garbage accepted")
	}
}

func TestReadsOwnProcess(t *testing.T) {
	m, err := ReadMemory(os.Getpid())
	if err != nil || m.RSS <= 0 {
		t.Fatalf("ReadMemory: %+v, %v", m, err)
	}
	if _, err := ReadCPU(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadTreeCPU(os.Getpid()); err != nil {
		t.Fatal(err)
	}
}
