// Package logbuf is a buffer that several goroutines may write log output to at once, for the
// tests and harnesses that read back what a component logged.
package logbuf

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"sync"
)

// Buffer collects writes from any number of goroutines. The zero value is ready to use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Lines decodes every line written so far as one JSON object, as zerolog writes them; a line that
// is not one is an error naming it.
func (b *Buffer) Lines() ([]map[string]any, error) {
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader([]byte(b.String())))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return nil, fmt.Errorf("log line %q is not a JSON object: %w", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out, sc.Err()
}
