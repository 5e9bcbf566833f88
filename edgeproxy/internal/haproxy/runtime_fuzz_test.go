package haproxy_test

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
)

// fakeSocket stands in for HAProxy's runtime API socket: it speaks enough of the protocol for
// the driver (interactive "prompt" pipelines, one-shot commands, "<<" payloads) and keeps every
// line it receives, so the tests see exactly what would reach HAProxy.
type fakeSocket struct {
	path string
	l    net.Listener
	// missing is the answer to `set map`, "entry not found." to make the driver add the key.
	missing bool

	mu    sync.Mutex
	lines []string
}

func newFakeSocket(tb testing.TB) *fakeSocket {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "admin.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	s := &fakeSocket{path: path, l: l}
	tb.Cleanup(func() { _ = l.Close() })
	go s.serve()
	return s
}

func (s *fakeSocket) serve() {
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		go s.handle(c)
	}
}

func (s *fakeSocket) record(line string) {
	s.mu.Lock()
	s.lines = append(s.lines, line)
	s.mu.Unlock()
}

func (s *fakeSocket) answer(cmd string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.missing && strings.HasPrefix(cmd, "set map ") {
		return "entry not found.\n"
	}
	return ""
}

func (s *fakeSocket) handle(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	// next reads and records a line, commands and payload lines alike, without its newline.
	next := func() (string, error) {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		line = strings.TrimSuffix(line, "\n")
		s.record(line)
		return line, nil
	}
	interactive := false
	for {
		line, err := next()
		if err != nil {
			return
		}
		switch {
		case line == "prompt":
			interactive = true
			_, _ = c.Write([]byte("\n> "))
			continue
		case line == "quit":
			return
		case strings.HasSuffix(line, " <<"):
			for {
				p, err := next()
				if err != nil {
					return
				}
				if p == "" {
					break
				}
			}
		}
		ans := s.answer(line)
		if !interactive {
			_, _ = c.Write([]byte(ans))
			return
		}
		_, _ = c.Write([]byte(ans + "\n> "))
	}
}

// take returns and forgets the lines received so far.
func (s *fakeSocket) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.lines
	s.lines = nil
	return out
}

const fuzzMap = "/var/lib/livegate/sessions.map"

// wordOK is what a runtime command word may hold: nothing that ends, splits, escapes or
// comments out a command, or opens a payload.
func wordOK(w string) bool {
	if w == "" || strings.Contains(w, "<<") {
		return false
	}
	for i := 0; i < len(w); i++ {
		if c := w[i]; c <= ' ' || c == 0x7f || strings.IndexByte(";#\\\"'", c) >= 0 {
			return false
		}
	}
	return true
}

// FuzzRuntimeApply hands any key and value, unchecked, to the runtime driver, the last code
// before HAProxy's socket. Either it refuses before anything reaches the socket, with an error
// that names the command, or every line HAProxy receives is one of the protocol's own lines or a
// command of exactly the expected words, none of which can end the command, start another one,
// open a payload or comment the rest out.
func FuzzRuntimeApply(f *testing.F) {
	for _, s := range [][2]string{
		{"s-1", "10.0.0.1:30000"}, {"s-1", "[fd00::1]:30000"}, {"s\nshow info", "10.0.0.1:1"}, {"s", "10.0.0.1:1\nclear map x"},
		{"s;clear map #0", "1.2.3.4:5"}, {"s", "1.2.3.4:5 #"}, {"#0", "1.2.3.4:5"}, {"s", "<<"}, {"s<<", "x"}, {"s\r", "x"},
		{"s", "$(reboot)"}, {"`id`", "x"}, {"a|b", "c&d"}, {"-j", "ACCEPT"}, {"s\x00", "x"}, {"sessi\u043en", "x"}, {"s\u00a0x", "y"},
		{"", "x"}, {"s", ""}, {strings.Repeat("a", 4096), "x"}, {"s\\", "x"}, {"'s'", "\"x\""},
	} {
		f.Add(s[0], s[1], false, false)
		f.Add(s[0], s[1], true, false)
		f.Add(s[0], s[1], false, true)
	}
	sock := newFakeSocket(f)
	client := haproxy.NewClient(sock.path, 5*time.Second)
	d, err := haproxy.NewRuntimeDriver(client, fuzzMap)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, key, value string, del, missing bool) {
		sock.mu.Lock()
		sock.missing = missing
		sock.mu.Unlock()
		// A new connection each time, so that every exchange starts with its "prompt".
		client.Close()
		sock.take()
		set, dels := haproxytest.Change(key, value, del)
		err := d.Apply(context.Background(), set, dels)
		lines := sock.take()
		keyOK, valueOK := wordOK(key), wordOK(value) || del
		if !keyOK || !valueOK {
			if err == nil || len(lines) != 0 {
				t.Fatalf("key %q value %q: err %v, sent %q", key, value, err, lines)
			}
			if !strings.HasPrefix(err.Error(), "runtime command ") {
				t.Fatalf("refusal %q does not name the command", err)
			}
			return
		}
		if err != nil {
			t.Fatalf("key %q value %q refused: %v", key, value, err)
		}
		var want []string
		switch {
		case del:
			want = []string{"prompt", "del map " + fuzzMap + " " + key, "show info"}
		case missing:
			want = []string{"prompt", "set map " + fuzzMap + " " + key + " " + value, "show info", "add map " + fuzzMap + " <<", key + " " + value, ""}
		default:
			want = []string{"prompt", "set map " + fuzzMap + " " + key + " " + value, "show info"}
		}
		if !slices.Equal(lines, want) {
			t.Fatalf("key %q value %q: HAProxy got %q, want %q", key, value, lines, want)
		}
	})
}

// FuzzCommand builds runtime commands from any words (space-separated in the input) and payload
// lines. An accepted command encodes to one line of exactly those words joined by single
// spaces; anything that could split or extend it is refused with the word at fault quoted.
func FuzzCommand(f *testing.F) {
	for _, s := range []string{"set map /m s 1.2.3.4:5", "show map /m", "add map /m", "set map /m a;b c", "set map /m #1 c",
		"del map /m a\nshow", "x <<", "a\tb", "\x00", "\u2028", "a\\ b", "a\"b", "a'b", "a\x7fb"} {
		f.Add(s, "k v")
	}
	f.Fuzz(func(t *testing.T, line, payload string) {
		words := strings.Split(line, " ")
		cmd, err := haproxy.NewCommand(words...)
		allOK := true
		for _, w := range words {
			allOK = allOK && wordOK(w)
		}
		if err != nil {
			if allOK || !strings.HasPrefix(err.Error(), "runtime command ") {
				t.Fatalf("NewCommand(%q) = %v", words, err)
			}
			return
		}
		if !allOK || cmd.String() != line || strings.ContainsAny(cmd.String(), "\r\n\x00;#") {
			t.Fatalf("NewCommand(%q) accepted as %q", words, cmd.String())
		}
		var lines [][]string
		for _, l := range strings.Split(payload, "\n") {
			lines = append(lines, strings.Split(l, " "))
		}
		if _, err := cmd.WithPayload(lines); err == nil {
			for _, l := range lines {
				for _, w := range l {
					if !wordOK(w) {
						t.Fatalf("payload word %q accepted", w)
					}
				}
			}
		}
	})
}
