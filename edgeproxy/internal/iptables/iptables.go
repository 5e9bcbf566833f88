// Package iptables reads and writes IPv4 iptables rules in batches: iptables-save output is
// parsed into tables, chains and rules, and changes are applied through one
// `iptables-restore --noflush` per batch, never one process per rule; Exec feeds the batches to
// one long-lived iptables-restore while they keep coming. Parsing and rendering are pure; Exec
// is the thin adapter that runs the commands (optionally inside a network namespace, through a
// command prefix).
package iptables

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Runner reads the ruleset and applies restore batches.
type Runner interface {
	// Save returns the output of iptables-save for the given table, or all tables when table
	// is empty.
	Save(ctx context.Context, table string) ([]byte, error)
	// Restore feeds payload to iptables-restore --noflush, which applies it per table
	// atomically or not at all.
	Restore(ctx context.Context, payload []byte) error
}

// Exec runs the iptables binaries. It is safe for concurrent use; restores are serialised.
type Exec struct {
	prefix  []string
	save    string
	restore string
	idle    time.Duration

	mu sync.Mutex
	// r is the long-lived iptables-restore, nil while none runs; lastUse is when it last
	// committed a batch.
	r       *restorer
	lastUse time.Time
	timer   *time.Timer
}

// DefaultIdleTimeout is how long the long-lived iptables-restore waits for the next batch
// before it is stopped: under churn it is fed many batches a second, at rest nothing runs.
const DefaultIdleTimeout = 10 * time.Second

// ExecOption configures Exec.
type ExecOption func(*Exec)

// WithNetns runs the commands inside the named network namespace (`ip netns exec <name>`).
func WithNetns(name string) ExecOption {
	return func(e *Exec) {
		if name != "" {
			e.prefix = []string{"ip", "netns", "exec", name}
		}
	}
}

// WithIdleTimeout sets how long the long-lived iptables-restore waits for the next batch before
// it is stopped; zero or less runs one iptables-restore per batch.
func WithIdleTimeout(d time.Duration) ExecOption {
	return func(e *Exec) { e.idle = d }
}

// NewExec returns a runner over iptables-save and iptables-restore from PATH.
func NewExec(opts ...ExecOption) *Exec {
	e := &Exec{save: "iptables-save", restore: "iptables-restore", idle: DefaultIdleTimeout}
	for _, o := range opts {
		o(e)
	}
	return e
}

// Save runs iptables-save.
func (e *Exec) Save(ctx context.Context, table string) ([]byte, error) {
	args := []string{e.save}
	if table != "" {
		args = append(args, "-t", table)
	}
	var stdout, stderr bytes.Buffer
	if err := e.run(ctx, args, nil, &stdout, &stderr); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", e.save, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// LongLivedMaxLines is the longest payload fed to the long-lived iptables-restore. A larger one
// (a cold start, a large repair) gets a process of its own: its start costs little next to the
// batch, and the long-lived process would keep the memory it took for as long as it runs.
const LongLivedMaxLines = 1000

// Restore feeds payload to iptables-restore --noflush and returns once it is committed. The
// wait flag makes it queue behind other writers holding the xtables lock (legacy backend)
// instead of failing. A payload of at most LongLivedMaxLines lines whose last line is a COMMIT
// goes to the long-lived process (started when none runs); anything else, or with the idle
// timeout off, gets a process of its own.
func (e *Exec) Restore(ctx context.Context, payload []byte) error {
	args := []string{e.restore, "--noflush", "--wait", "10"}
	if e.idle <= 0 || !bytes.HasSuffix(payload, []byte("\nCOMMIT\n")) || bytes.Count(payload, []byte{'\n'}) > LongLivedMaxLines {
		var stderr bytes.Buffer
		if err := e.run(ctx, args, bytes.NewReader(payload), nil, &stderr); err != nil {
			return fmt.Errorf("%s: %w: %s", e.restore, err, strings.TrimSpace(stderr.String()))
		}
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.r == nil {
		argv := append(append(append([]string(nil), e.prefix...), args...), "--verbose")
		r, err := startRestorer(argv)
		if err != nil {
			return fmt.Errorf("start %s: %w", e.restore, err)
		}
		e.r = r
	}
	if err := e.r.apply(ctx, e.restore, payload); err != nil {
		e.r.stop()
		e.r = nil
		return err
	}
	e.lastUse = time.Now()
	if e.timer == nil {
		e.timer = time.AfterFunc(e.idle, e.stopIdle)
	} else {
		e.timer.Reset(e.idle)
	}
	return nil
}

// stopIdle stops the long-lived process unless a batch came in since the timer was set.
func (e *Exec) stopIdle() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.r != nil && time.Since(e.lastUse) >= e.idle {
		e.r.stop()
		e.r = nil
	}
}

// Close stops the long-lived iptables-restore, if one runs; a later Restore starts another.
func (e *Exec) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.timer != nil {
		e.timer.Stop()
	}
	if e.r != nil {
		e.r.stop()
		e.r = nil
	}
	return nil
}

func (e *Exec) run(ctx context.Context, args []string, stdin *bytes.Reader, stdout, stderr *bytes.Buffer) error {
	argv := append(append([]string(nil), e.prefix...), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	if stdout != nil {
		cmd.Stdout = stdout
	}
	cmd.Stderr = stderr
	return cmd.Run()
}

// Ruleset is parsed iptables-save output.
type Ruleset struct {
	Tables map[string]*Table
}

// Table is one table of a ruleset.
type Table struct {
	Name string
	// Chains maps each chain to its policy ("-" for user-defined chains).
	Chains map[string]string
	// Rules are in ruleset order.
	Rules []Rule
}

// Rule is one rule as iptables-save prints it.
type Rule struct {
	Chain string
	// Spec is the rule after "-A <chain> ", exactly as printed; "-D <chain> <spec>" in a
	// restore batch deletes this rule.
	Spec string
	// Args is Spec split into words, quotes removed.
	Args []string
}

// Table returns the named table, or an empty one when the ruleset does not hold it.
func (r *Ruleset) Table(name string) *Table {
	if t, ok := r.Tables[name]; ok {
		return t
	}
	return &Table{Name: name, Chains: map[string]string{}}
}

// HasChain reports whether the table holds the chain.
func (t *Table) HasChain(name string) bool {
	_, ok := t.Chains[name]
	return ok
}

// ChainRules returns the rules of one chain, in order.
func (t *Table) ChainRules(chain string) []Rule {
	var out []Rule
	for _, r := range t.Rules {
		if r.Chain == chain {
			out = append(out, r)
		}
	}
	return out
}

// RulesByChain groups the table's rules by chain, each in order.
func (t *Table) RulesByChain() map[string][]Rule {
	out := make(map[string][]Rule, len(t.Chains))
	for _, r := range t.Rules {
		out[r.Chain] = append(out[r.Chain], r)
	}
	return out
}

// ParseSave parses iptables-save output.
func ParseSave(data []byte) (*Ruleset, error) {
	rs := &Ruleset{Tables: map[string]*Table{}}
	var cur *Table
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		switch {
		case text == "" || strings.HasPrefix(text, "#"):
		case strings.HasPrefix(text, "*"):
			cur = &Table{Name: text[1:], Chains: map[string]string{}}
			rs.Tables[cur.Name] = cur
		case text == "COMMIT":
			cur = nil
		case cur == nil:
			return nil, fmt.Errorf("iptables-save line %d: %q outside a table", line, text)
		case strings.HasPrefix(text, ":"):
			fields := strings.Fields(text[1:])
			if len(fields) < 2 {
				return nil, fmt.Errorf("iptables-save line %d: bad chain line %q", line, text)
			}
			cur.Chains[fields[0]] = fields[1]
		case strings.HasPrefix(text, "-A "):
			chain, spec, _ := strings.Cut(text[3:], " ")
			args, err := Split(spec)
			if err != nil {
				return nil, fmt.Errorf("iptables-save line %d: %w", line, err)
			}
			cur.Rules = append(cur.Rules, Rule{Chain: chain, Spec: spec, Args: args})
		default:
			return nil, fmt.Errorf("iptables-save line %d: unexpected %q", line, text)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read iptables-save output: %w", err)
	}
	return rs, nil
}

// Split splits a rule spec into words the way iptables-restore does: double quotes group
// words and a backslash escapes the next character. It works on bytes, as iptables-restore
// does, so a word that is not valid UTF-8 comes back unchanged.
func Split(spec string) ([]string, error) {
	var (
		out     []string
		word    strings.Builder
		inWord  bool
		quoted  bool
		escaped bool
	)
	for i := 0; i < len(spec); i++ {
		c := spec[i]
		switch {
		case escaped:
			word.WriteByte(c)
			escaped = false
		case c == '\\':
			escaped, inWord = true, true
		case c == '"':
			quoted, inWord = !quoted, true
		case (c == ' ' || c == '\t') && !quoted:
			if inWord {
				out = append(out, word.String())
				word.Reset()
				inWord = false
			}
		default:
			word.WriteByte(c)
			inWord = true
		}
	}
	if quoted || escaped {
		return nil, fmt.Errorf("unterminated quote or escape in %q", spec)
	}
	if inWord {
		out = append(out, word.String())
	}
	return out, nil
}

// Quote renders one word for a restore line, quoting it when it holds spaces or quotes.
func Quote(word string) string {
	if word != "" && !strings.ContainsAny(word, " \t\"\\") {
		return word
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(word) + `"`
}

// Batch collects lines of an iptables-restore payload per table. Tables are written in the
// order they were first used, each closed by COMMIT.
type Batch struct {
	order []string
	lines map[string][]string
}

// NewBatch returns an empty batch.
func NewBatch() *Batch { return &Batch{lines: map[string][]string{}} }

func (b *Batch) add(table, line string) {
	if _, ok := b.lines[table]; !ok {
		b.order = append(b.order, table)
	}
	b.lines[table] = append(b.lines[table], line)
}

// DeclareChain adds ":<chain> - [0:0]", which creates a user-defined chain or, with
// --noflush, flushes it when it exists.
func (b *Batch) DeclareChain(table, chain string) { b.add(table, ":"+chain+" - [0:0]") }

// Append adds "-A <chain> <spec>".
func (b *Batch) Append(table, chain, spec string) { b.add(table, "-A "+chain+" "+spec) }

// Insert adds "-I <chain> <pos> <spec>".
func (b *Batch) Insert(table, chain string, pos int, spec string) {
	b.add(table, fmt.Sprintf("-I %s %d %s", chain, pos, spec))
}

// Delete adds "-D <chain> <spec>", which removes the first rule equal to spec.
func (b *Batch) Delete(table, chain, spec string) { b.add(table, "-D "+chain+" "+spec) }

// DeleteChain adds "-X <chain>"; the chain must be empty and unreferenced by then.
func (b *Batch) DeleteChain(table, chain string) { b.add(table, "-X "+chain) }

// Len is the number of lines in the batch, COMMITs aside.
func (b *Batch) Len() int {
	n := 0
	for _, l := range b.lines {
		n += len(l)
	}
	return n
}

// Bytes renders the restore payload.
func (b *Batch) Bytes() []byte {
	var buf bytes.Buffer
	for _, t := range b.order {
		buf.WriteString("*" + t + "\n")
		for _, l := range b.lines[t] {
			buf.WriteString(l)
			buf.WriteByte('\n')
		}
		buf.WriteString("COMMIT\n")
	}
	return buf.Bytes()
}

// ErrNotFound reports that an iptables binary is not installed.
var ErrNotFound = errors.New("iptables binaries not found")

// Check reports ErrNotFound when the binaries the runner uses are not in PATH.
func (e *Exec) Check() error {
	for _, bin := range []string{e.save, e.restore} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s: %w", bin, ErrNotFound)
		}
	}
	return nil
}
