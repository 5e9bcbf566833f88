package haproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
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

// Client talks to HAProxy's runtime API (the stats socket). Each call opens its own connection, so
// a Client is safe for concurrent use.
type Client struct {
	network, addr string
	timeout       time.Duration
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

// Exec runs one command and returns its answer.
func (c *Client) Exec(ctx context.Context, cmd Command) (string, error) {
	var b strings.Builder
	cmd.encode(&b)
	out, err := c.roundTrip(ctx, b.String())
	if err != nil {
		return "", fmt.Errorf("haproxy %q: %w", cmd.String(), err)
	}
	return strings.TrimRight(out, "\n"), nil
}

// Pipeline runs commands in order on one connection (interactive mode) and returns one answer
// per command. Commands with a payload are not allowed here: use Exec for them.
func (c *Client) Pipeline(ctx context.Context, cmds []Command) ([]string, error) {
	if len(cmds) == 0 {
		return nil, nil
	}
	var b strings.Builder
	b.WriteString("prompt\n")
	for _, cmd := range cmds {
		if len(cmd.payload) > 0 {
			return nil, fmt.Errorf("haproxy pipeline: %q has a payload", cmd.String())
		}
		cmd.encode(&b)
	}
	b.WriteString("quit\n")
	out, err := c.roundTrip(ctx, b.String())
	if err != nil {
		return nil, fmt.Errorf("haproxy pipeline of %d commands: %w", len(cmds), err)
	}
	// In interactive mode every answer is followed by the prompt "\n> "; the first prompt
	// answers "prompt" itself.
	parts := strings.Split(out, "\n> ")
	if len(parts) < len(cmds)+1 {
		return nil, fmt.Errorf("haproxy pipeline: %d answers to %d commands", len(parts)-1, len(cmds))
	}
	answers := make([]string, len(cmds))
	for i := range cmds {
		answers[i] = strings.TrimRight(parts[i+1], "\n")
	}
	return answers, nil
}

func (c *Client) roundTrip(ctx context.Context, req string) (string, error) {
	d := net.Dialer{Timeout: c.timeout}
	conn, err := d.DialContext(ctx, c.network, c.addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	deadline := time.Now().Add(c.timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	// Write while reading: a long pipeline fills HAProxy's output buffer before it has read all
	// of its input.
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
