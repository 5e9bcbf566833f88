package logbuf

import (
	"strings"
	"sync"
	"testing"
)

func TestConcurrentWritesAndLines(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				if _, err := b.Write([]byte(`{"message":"x"}` + "\n")); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	lines, err := b.Lines()
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 800 || lines[0]["message"] != "x" {
		t.Fatalf("got %d lines, first %v", len(lines), lines[0])
	}
}

func TestLinesNamesABadLine(t *testing.T) {
	var b Buffer
	b.Write([]byte("{\"ok\":true}\nnot json\n"))
	if _, err := b.Lines(); err == nil || !strings.Contains(err.Error(), `"not json"`) {
		t.Fatalf("Lines error = %v, want one naming the bad line", err)
	}
}
