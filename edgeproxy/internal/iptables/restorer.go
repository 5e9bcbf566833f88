package iptables

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// restorer is one long-lived `iptables-restore --noflush --verbose`. Starting the program costs
// more than the batches the edge writes under churn (5-20 ms against well under 1 ms on a busy
// two-core host), so batches are fed to one process instead, each table still committed
// atomically or not at all (one after the other: a batch's nat table may be committed when its
// filter table fails, which the caller's read-back after a failure sees). The process answers nothing per batch; with --verbose it echoes
// comment lines, and since it reads its input in order, the echo of a comment written after a
// batch means the batch was committed. A batch that fails ends the process (it prints
// "line N failed" and exits), so a failure costs a restart. Both
// backends re-read the kernel's rules for every commit and take the xtables lock (legacy) only
// from a table's first line to its COMMIT, so rules changed by others are seen, and nobody else
// waits on an idle restorer.
type restorer struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	exited chan struct{}
	// quit tells the output reader that nobody reads lines any more.
	quit     chan struct{}
	quitOnce sync.Once
	stderr   *tailBuffer
	// written counts the lines fed so far, to turn the process's line numbers into the batch's.
	written int
	seq     uint64
}

// markerPrefix starts the comment written after each batch.
const markerPrefix = "# livegate batch "

// stderrTail bounds what a restorer keeps of its standard error: the last batch's complaint.
const stderrTail = 4096

func startRestorer(argv []string) (*restorer, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	r := &restorer{cmd: cmd, stdin: stdin, lines: make(chan string, 16), exited: make(chan struct{}), quit: make(chan struct{}), stderr: &tailBuffer{max: stderrTail}}
	cmd.Stderr = r.stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		defer close(r.lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 0, 4096), 1<<20)
		for sc.Scan() {
			select {
			case r.lines <- sc.Text():
			case <-r.quit:
			}
		}
		// Whatever follows (a too long line, a read error) ends the process's use: the pipe
		// is drained so that it never blocks on a full stdout, and its exit is awaited.
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() {
		_ = cmd.Wait()
		close(r.exited)
	}()
	return r, nil
}

// apply feeds one payload and waits for it to be committed. Any error leaves the process
// unusable: the caller stops it and starts another for the next batch.
func (r *restorer) apply(ctx context.Context, name string, payload []byte) error {
	r.seq++
	marker := markerPrefix + strconv.FormatUint(r.seq, 10)
	first := r.written + 1
	r.written += bytes.Count(payload, []byte{'\n'}) + 1
	r.stderr.Reset()
	wrote := make(chan error, 1)
	go func() {
		_, err := r.stdin.Write(append(payload[:len(payload):len(payload)], marker+"\n"...))
		wrote <- err
	}()
	for {
		select {
		case line, ok := <-r.lines:
			if !ok {
				return r.failure(ctx, name, first)
			}
			if line == marker {
				return <-wrote
			}
		case <-ctx.Done():
			r.stop()
			return fmt.Errorf("%s: stopped before the batch was confirmed (committed or not): %w", name, ctx.Err())
		}
	}
}

// exitWait bounds how long a failed restorer's exit status is awaited once its output ended.
const exitWait = 5 * time.Second

// failure reports why the process stopped answering: its exit status and its complaint, with
// the line numbers of the whole stream turned into the batch's.
func (r *restorer) failure(ctx context.Context, name string, first int) error {
	select {
	case <-r.exited:
	case <-time.After(exitWait):
		r.stop()
	case <-ctx.Done():
		r.stop()
		return fmt.Errorf("%s: stopped before the batch was confirmed (committed or not): %w", name, ctx.Err())
	}
	status := "output ended"
	if st := r.cmd.ProcessState; st != nil {
		status = st.String()
	}
	msg := batchLines(strings.TrimSpace(r.stderr.String()), first)
	return fmt.Errorf("%s: %s: %s", name, status, msg)
}

var lineFailed = regexp.MustCompile(`line (\d+) failed`)

// batchLines rewrites "line N failed", N counted over the process's whole input, to count from
// the batch's first line.
func batchLines(msg string, first int) string {
	return lineFailed.ReplaceAllStringFunc(msg, func(m string) string {
		n, err := strconv.Atoi(lineFailed.FindStringSubmatch(m)[1])
		if err != nil || n < first {
			return m
		}
		return fmt.Sprintf("line %d of the batch failed", n-first+1)
	})
}

// stop ends the process: end of input lets it exit cleanly between batches; a process stuck
// in a batch is killed.
func (r *restorer) stop() {
	r.quitOnce.Do(func() { close(r.quit) })
	_ = r.stdin.Close()
	select {
	case <-r.exited:
		return
	case <-time.After(exitWait):
	}
	if r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
	}
	<-r.exited
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

func (t *tailBuffer) Reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = t.b[:0]
}
