package turnrelay

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
)

// MinSecretLen is the shortest shared secret accepted: an HMAC key anyone could guess would let
// them mint credentials for any session.
const MinSecretLen = 16

// ParseSecrets reads a secret file: one secret a line, the first the one credentials are issued
// with, the others still accepted (the old secret while a rotation is under way). Blank lines and
// lines starting with '#' are skipped. Errors never quote a secret.
func ParseSecrets(data []byte) ([][]byte, error) {
	var out [][]byte
	for i, line := range bytes.Split(data, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		if len(line) < MinSecretLen {
			return nil, fmt.Errorf("line %d: a secret of %d bytes; want at least %d", i+1, len(line), MinSecretLen)
		}
		out = append(out, bytes.Clone(line))
	}
	if len(out) == 0 {
		return nil, errors.New("no secret in the file")
	}
	return out, nil
}

// secrets holds the accepted secrets; readers never lock.
type secrets struct {
	p   atomic.Pointer[[][]byte]
	raw []byte
}

// load reads path and reports whether the secrets changed. On an error the secrets held stay.
func (s *secrets) load(path string) (bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("turn secret file: %w", err)
	}
	if s.raw != nil && bytes.Equal(data, s.raw) {
		return false, nil
	}
	list, err := ParseSecrets(data)
	if err != nil {
		return false, fmt.Errorf("turn secret file %s: %w", path, err)
	}
	s.raw = data
	s.p.Store(&list)
	return true, nil
}

// current is the secret credentials are issued with.
func (s *secrets) current() []byte { return (*s.p.Load())[0] }

// all are the secrets accepted.
func (s *secrets) all() [][]byte { return *s.p.Load() }
