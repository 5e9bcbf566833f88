package haproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Command is one runtime API command. Its words are checked when it is built, so no argument can
// end the command or start another one: route data never reaches the socket unchecked.
type Command struct {
	words   []string
	payload []string
}

// NewCommand builds a command from words. A word may not be empty and may not hold whitespace,
// control characters, ';' (the CLI's command separator), '#', '\\', quotes or "<<" (which opens a
// payload).
func NewCommand(words ...string) (Command, error) {
	if len(words) == 0 {
		return Command{}, errors.New("runtime command: no words")
	}
	for _, w := range words {
		if err := checkWord(w); err != nil {
			return Command{}, fmt.Errorf("runtime command %q: %w", words[0], err)
		}
	}
	return Command{words: words}, nil
}

// WithPayload returns c with payload lines (each of them words joined by one space), sent after
// the command line as "<<" and ended by an empty line, as `add map` accepts.
func (c Command) WithPayload(lines [][]string) (Command, error) {
	out := Command{words: c.words, payload: make([]string, 0, len(lines))}
	for _, l := range lines {
		if len(l) == 0 {
			return Command{}, errors.New("runtime command: empty payload line")
		}
		for _, w := range l {
			if err := checkWord(w); err != nil {
				return Command{}, fmt.Errorf("runtime command %q payload: %w", c.words[0], err)
			}
		}
		out.payload = append(out.payload, strings.Join(l, " "))
	}
	return out, nil
}

// String is the command line as sent, without its payload.
func (c Command) String() string { return strings.Join(c.words, " ") }

func (c Command) encode(b *strings.Builder) {
	b.WriteString(c.String())
	if len(c.payload) == 0 {
		b.WriteByte('\n')
		return
	}
	b.WriteString(" <<\n")
	for _, l := range c.payload {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
}

func checkWord(w string) error {
	if w == "" {
		return errors.New("empty word")
	}
	if strings.Contains(w, "<<") {
		return fmt.Errorf("word %q opens a payload", w)
	}
	for i := 0; i < len(w); i++ {
		c := w[i]
		if c <= ' ' || c == 0x7f || c == ';' || c == '#' || c == '\\' || c == '"' || c == '\'' {
			return fmt.Errorf("word %q has forbidden character %q at offset %d", w, c, i)
		}
	}
	return nil
}

// Client talks to HAProxy's runtime API (the stats socket). Commands without a payload share one
// connection kept open in interactive mode (`prompt`), so a route costs one exchange rather than
// a dial, HAProxy's accept and a fresh CLI session. Callers are serialised on that connection; a
// command with a payload gets a connection of its own (non-interactive), which keeps the kept
// connection's answers delimited by the prompt alone. A Client is safe for concurrent use.
//
// The kept connection is checked before each use (HAProxy closes an idle CLI connection after its
// `stats timeout`, and a restart closes it too) and replaced when it is gone. Every exchange ends
// with `show info`: a worker that answers "Stopping: 1" has been replaced by a reload and its
// answers (and map) no longer count, so the exchange is run again on a new connection, which
// reaches the new worker. A connection that dies after commands were written is retried once on a
// new connection only when every command is safe to run twice (reads, `set map`, `del map`, and an
// `add map` of a key the same exchange deleted first); otherwise the error says so.
type Client struct {
	network, addr string
	timeout       time.Duration

	mu   sync.Mutex
	kept *keptConn
}

type keptConn struct {
	conn net.Conn
	r    *bufio.Reader
}

// NewClient returns a client of the socket at addr: a unix socket path, or "tcp:host:port".
func NewClient(addr string, timeout time.Duration) *Client {
	if rest, ok := strings.CutPrefix(addr, "tcp:"); ok {
		return &Client{network: "tcp", addr: rest, timeout: timeout}
	}
	return &Client{network: "unix", addr: addr, timeout: timeout}
}

// Addr is the socket the client talks to.
func (c *Client) Addr() string { return c.addr }

// Close closes the kept connection; the next command opens another one.
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drop()
}

// Exec runs one command and returns its answer.
func (c *Client) Exec(ctx context.Context, cmd Command) (string, error) {
	if len(cmd.payload) == 0 {
		answers, err := c.exchange(ctx, []Command{cmd})
		if err != nil {
			return "", fmt.Errorf("haproxy %q: %w", cmd.String(), err)
		}
		return answers[0], nil
	}
	var b strings.Builder
	cmd.encode(&b)
	out, err := c.roundTrip(ctx, b.String())
	if err != nil {
		return "", fmt.Errorf("haproxy %q: %w", cmd.String(), err)
	}
	return strings.TrimRight(out, "\n"), nil
}

// Pipeline runs commands in order on the kept connection and returns one answer per command.
// Commands with a payload are not allowed here: use Exec for them.
func (c *Client) Pipeline(ctx context.Context, cmds []Command) ([]string, error) {
	if len(cmds) == 0 {
		return nil, nil
	}
	for _, cmd := range cmds {
		if len(cmd.payload) > 0 {
			return nil, fmt.Errorf("haproxy pipeline: %q has a payload", cmd.String())
		}
	}
	answers, err := c.exchange(ctx, cmds)
	if err != nil {
		return nil, fmt.Errorf("haproxy pipeline of %d commands: %w", len(cmds), err)
	}
	return answers, nil
}

// stoppingTries bounds the exchanges answered by stopping workers during one reload.
const stoppingTries = 5

var guard = Command{words: []string{"show", "info"}}

// exchange runs cmds, then the guard, on the kept connection.
func (c *Client) exchange(ctx context.Context, cmds []Command) ([]string, error) {
	var b strings.Builder
	for _, cmd := range cmds {
		cmd.encode(&b)
	}
	guard.encode(&b)
	req := b.String()
	c.mu.Lock()
	defer c.mu.Unlock()
	retried := false
	for stopping := 0; ; {
		reused := c.kept != nil && c.kept.alive()
		if !reused {
			c.drop()
			if err := c.dial(ctx); err != nil {
				return nil, err
			}
		}
		answers, sent, err := c.run(ctx, req, len(cmds)+1)
		if err != nil {
			c.drop()
			if ctx.Err() != nil || !reused || retried {
				return nil, err
			}
			if sent && !retrySafe(cmds) {
				return nil, fmt.Errorf("%w (connection lost after the commands were sent; not retried, as running them twice is not safe: they may or may not have run)", err)
			}
			retried = true
			continue
		}
		if !strings.Contains(answers[len(cmds)], "\nStopping: 1\n") {
			return answers[:len(cmds)], nil
		}
		// A reload replaced this worker: its map is going away with it.
		c.drop()
		if stopping++; stopping == stoppingTries {
			return nil, fmt.Errorf("answered by a stopping worker %d times in a row (reload in progress)", stopping)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// retrySafe says whether running cmds a second time leaves HAProxy as running them once does.
func retrySafe(cmds []Command) bool {
	deleted := map[[2]string]bool{}
	for _, cmd := range cmds {
		w := cmd.words
		switch {
		case w[0] == "show" || w[0] == "get":
		case len(w) >= 4 && w[1] == "map" && w[0] == "del":
			deleted[[2]string{w[2], w[3]}] = true
		case len(w) >= 4 && w[1] == "map" && w[0] == "set":
		case len(w) >= 4 && w[1] == "map" && w[0] == "add" && deleted[[2]string{w[2], w[3]}]:
		default:
			return false
		}
	}
	return true
}

func (c *Client) dial(ctx context.Context) error {
	d := net.Dialer{Timeout: c.timeout}
	conn, err := d.DialContext(ctx, c.network, c.addr)
	if err != nil {
		return err
	}
	c.kept = &keptConn{conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}
	// The answer to `prompt` is the first prompt.
	if _, _, err := c.run(ctx, "prompt\n", 1); err != nil {
		c.drop()
		return fmt.Errorf("interactive mode: %w", err)
	}
	return nil
}

func (c *Client) drop() {
	if c.kept != nil {
		_ = c.kept.conn.Close()
		c.kept = nil
	}
}

// alive peeks at the idle connection without blocking: HAProxy closed it when it reads EOF, and
// any byte waiting is out of step with our commands.
func (k *keptConn) alive() bool {
	if k.r.Buffered() > 0 {
		return false
	}
	sc, ok := k.conn.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = errors.Is(err, syscall.EAGAIN)
		return true
	})
	return err == nil && alive
}

// promptDelim ends every answer in interactive mode.
const promptDelim = "\n> "

// syncWrite bounds a request written before reading: it fits the socket's buffer, so the write
// cannot wait for HAProxy to read while HAProxy waits for us to read its answers.
const syncWrite = 16 << 10

// run writes req on the kept connection and reads n answers. sent says whether any of req may
// have reached HAProxy.
func (c *Client) run(ctx context.Context, req string, n int) ([]string, bool, error) {
	k := c.kept
	// A deadline left set would fail the next use's liveness check once it passed, and the
	// connection would be dropped long before HAProxy's stats timeout.
	defer c.bound(ctx, k.conn)()
	var werr chan error
	if len(req) <= syncWrite {
		if w, err := io.WriteString(k.conn, req); err != nil {
			return nil, w > 0, fmt.Errorf("write: %w", err)
		}
	} else {
		werr = make(chan error, 1)
		go func() {
			_, err := io.WriteString(k.conn, req)
			werr <- err
		}()
	}
	answers, rerr := readAnswers(k.r, n)
	if werr != nil {
		if err := <-werr; err != nil {
			return nil, true, fmt.Errorf("write: %w", err)
		}
	}
	if rerr != nil {
		return nil, true, fmt.Errorf("read: %w", rerr)
	}
	return answers, true, nil
}

// readAnswers reads n answers, each ended by the prompt, without reading past the last one.
// Every answer ends with a newline (an empty one is the newline alone) and the prompt "> "
// follows it, so a newline followed by "> " ends an answer; at least the prompt follows every
// newline, so the peek waits only for bytes HAProxy is sending.
func readAnswers(r *bufio.Reader, n int) ([]string, error) {
	answers := make([]string, 0, n)
	var cur []byte
	for len(answers) < n {
		line, err := r.ReadSlice('\n')
		cur = append(cur, line...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return nil, err
		}
		p, err := r.Peek(2)
		if err != nil {
			return nil, err
		}
		if string(p) == "> " {
			_, _ = r.Discard(2)
			answers = append(answers, strings.TrimRight(string(cur), "\n"))
			cur = cur[:0]
		}
	}
	return answers, nil
}

// bound makes conn's reads and writes fail at the client's timeout, or at once when ctx ends;
// release lifts the bound again, unless ctx has ended (the connection is then out of step and
// must be dropped).
func (c *Client) bound(ctx context.Context, conn net.Conn) (release func()) {
	deadline := time.Now().Add(c.timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	return func() {
		if stop() {
			_ = conn.SetDeadline(time.Time{})
		}
	}
}

// roundTrip sends req on a connection of its own and reads until HAProxy closes it.
func (c *Client) roundTrip(ctx context.Context, req string) (string, error) {
	d := net.Dialer{Timeout: c.timeout}
	conn, err := d.DialContext(ctx, c.network, c.addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	defer c.bound(ctx, conn)()
	// Write while reading: a payload may fill HAProxy's output buffer before it has read all of
	// its input.
	werr := make(chan error, 1)
	go func() {
		_, err := io.WriteString(conn, req)
		werr <- err
	}()
	var out strings.Builder
	_, rerr := io.Copy(&out, bufio.NewReaderSize(conn, 64<<10))
	if err := <-werr; err != nil {
		return "", fmt.Errorf("write: %w", err)
	}
	if rerr != nil {
		return "", fmt.Errorf("read: %w", rerr)
	}
	return out.String(), nil
}
