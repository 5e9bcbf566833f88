// Package settings reads a program's settings from, lowest to highest precedence: the defaults of
// its flags, a TOML file, environment variables, the command line and, where the program has
// them, late arguments of its own form (the agent's Kit-style --/exts/<ext>/<key>=value). Every
// setting is one flag of a flag.FlagSet: its name is the TOML key and, upper-cased with - as _
// after the program's prefix, the environment variable; its usage is the --help text, to which
// Annotate adds the variable. One set of rules holds for every source: a key or variable that
// names no setting is an error, and so is a value the flag refuses; each error names the source
// and the setting, and the value unless the setting is secret.
package settings

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/BurntSushi/toml"

	"github.com/livegate/livegate/pkg/commalist"
)

// ConfigFlag names the settings file. It is read before the other sources are resolved, so it
// cannot itself be a key of the file.
const ConfigFlag = "config"

// Entry is one value of a settings file.
type Entry struct {
	// Key is where the value stands in the file, as an error names it.
	Key string
	// Flag is the setting it sets; empty when the key names none.
	Flag string
	// Value is the decoded TOML value.
	Value any
	// Hint says, for a key that names no setting, which keys of its kind there are; empty says
	// the keys are the flag names.
	Hint string
}

// Late is one setting from an argument the flag package does not parse.
type Late struct {
	// Source names the argument, as an error names it.
	Source string
	// Flag is the setting it sets; empty when the argument names none.
	Flag  string
	Value string
	// Hint says, for an argument that names no setting, which arguments of its kind there are.
	Hint string
}

// Loader holds one program's rules beyond the flags themselves.
type Loader struct {
	// EnvPrefix starts every variable the program reads: LIVEGATE_AGENT_.
	EnvPrefix string
	// Aliases maps a flag's second name to the flag it shares a variable with; precedence is
	// decided per setting, so setting either name sets both.
	Aliases map[string]string
	// Secrets are the flags whose values are never repeated in an error.
	Secrets map[string]bool
	// FlagsOnly are the flags only the command line sets (--version, a command's own switches): no
	// variable or key names them.
	FlagsOnly map[string]bool
	// Ignored are the settings the program's other commands read and this one does not: a
	// variable or file key naming one is accepted and left alone, so that one file and one
	// environment serve every command. The command line, whose flags are the command's, refuses
	// them.
	Ignored map[string]bool
	// Entries turns a decoded file into its values; nil reads every top-level key as a flag name.
	Entries func(path string, doc map[string]any) ([]Entry, error)
	// Args is how many arguments a command takes after its flags (token verify's token); more are
	// refused.
	Args int
	// LateName is what the help calls the late arguments: "Kit-style flags".
	LateName string
	// Late picks the arguments it reads itself out of the command line (ok), before the flags are
	// parsed; they are applied last, over every other source.
	Late func(arg string) (l Late, ok bool, err error)
}

// Sources says where each setting that is not a default came from: "flag --pool",
// "environment LIVEGATE_AGENT_POOL", "config /etc/agent.toml: pool".
type Sources map[string]string

// Source names where setting name came from, "--<name> (default)" when no source set it.
func (s Sources) Source(name string) string {
	if src, ok := s[name]; ok {
		return src
	}
	return "--" + name + " (default)"
}

// Errorf is the refusal of setting name's value by a check that runs after loading: the text
// format gives, after where the value came from (flag --pool, environment LIVEGATE_AGENT_POOL,
// config /etc/agent.toml: pool, or --pool (default)). The text must not repeat a secret.
func (s Sources) Errorf(name, format string, a ...any) error {
	return fmt.Errorf("%s: %w", s.Source(name), fmt.Errorf(format, a...))
}

// Report writes err as program (its name and command, as -h shows it) says it: one line per
// error, and for a refused command line a pointer to -h.
func Report(w io.Writer, program string, err error) {
	fmt.Fprintf(w, "%s: %v\n", program, err)
	if errors.Is(err, ErrUsage) {
		fmt.Fprintf(w, "(`%s -h` lists the flags)\n", program)
	}
}

// ErrUsage matches (errors.Is) every refusal of the command line.
var ErrUsage = errors.New("refused command line")

type usageError struct{ err error }

func (e usageError) Error() string        { return e.err.Error() }
func (e usageError) Unwrap() error        { return e.err }
func (e usageError) Is(target error) bool { return target == ErrUsage }

// EnvName is the variable that sets flag name.
func (l *Loader) EnvName(name string) string {
	return l.EnvPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

func (l *Loader) canonical(name string) string {
	if c, ok := l.Aliases[name]; ok {
		return c
	}
	return name
}

// Annotate adds each flag's variable to its help text; call it once every flag is defined.
func (l *Loader) Annotate(fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		if !l.FlagsOnly[f.Name] {
			f.Usage += " [env " + l.EnvName(f.Name) + "]"
		}
	})
}

// Usage is fs's help: synopsis, about (a paragraph or ""), how the flags are also set when fs
// has the config flag, then the flags with their defaults and variables. Set fs.Usage to it once
// every flag is defined and annotated.
func (l *Loader) Usage(fs *flag.FlagSet, synopsis, about string) func() {
	return func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: %s\n\n", synopsis)
		if about != "" {
			fmt.Fprintf(w, "%s\n\n", strings.TrimSpace(about))
		}
		if fs.Lookup(ConfigFlag) != nil {
			first := ""
			if l.LateName != "" {
				first = l.LateName + ", "
			}
			fmt.Fprintf(w, "A flag with a variable in brackets can also be set by that variable, or as a key of the --config\nfile. Precedence: %sflags, the environment, the file, then the defaults.\n\n", first)
		}
		fs.PrintDefaults()
	}
}

// Load parses args (without the program name) into fs, then gives every flag they left unset its
// value from environ (os.Environ()), then from the file the config flag names, then applies the
// late arguments. -h writes fs.Usage and returns flag.ErrHelp. A refused command line is an
// ErrUsage. The environment and the file report every error they hold at once, joined.
func (l *Loader) Load(fs *flag.FlagSet, args, environ []string) (Sources, error) {
	var late []Late
	var native []string
	for _, a := range args {
		if l.Late != nil {
			if lt, ok, err := l.Late(a); err != nil {
				return nil, usageError{err}
			} else if ok {
				late = append(late, lt)
				continue
			}
		}
		native = append(native, a)
	}
	out, usage := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(native)
	fs.SetOutput(out)
	fs.Usage = usage
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage()
		return nil, err
	}
	if err != nil {
		return nil, usageError{l.explainParseError(fs, err)}
	}
	if fs.NArg() > l.Args {
		return nil, usageError{fmt.Errorf("command line: unexpected argument %q", fs.Arg(l.Args))}
	}
	src := Sources{}
	fs.Visit(func(f *flag.Flag) { src[l.canonical(f.Name)] = "flag --" + f.Name })
	if err := l.applyEnv(fs, environ, src); err != nil {
		return nil, err
	}
	if f := fs.Lookup(ConfigFlag); f != nil && f.Value.String() != "" {
		if err := l.applyFile(fs, f.Value.String(), src); err != nil {
			return nil, err
		}
	}
	for _, lt := range late {
		if lt.Flag == "" || fs.Lookup(lt.Flag) == nil {
			return nil, usageError{unknown(printable(lt.Source), lt.Hint)}
		}
		if err := fs.Set(lt.Flag, lt.Value); err != nil {
			return nil, usageError{fmt.Errorf("%s: %w", lt.Source, l.badValue(fs.Lookup(lt.Flag), lt.Value, err))}
		}
		src[l.canonical(lt.Flag)] = lt.Source
	}
	return src, nil
}

// printable is s as an error may repeat it: quoted when it holds a line break or another control
// character, so that no name a user gave can start a line of its own.
func printable(s string) string {
	if strings.ContainsFunc(s, unicode.IsControl) {
		return strconv.Quote(s)
	}
	return s
}

// unknown is the refusal of a key, variable or argument at where that names no setting; hint
// says which there are.
func unknown(where, hint string) error {
	if hint == "" {
		return fmt.Errorf("%s: unknown setting", where)
	}
	return fmt.Errorf("%s: unknown setting (%s)", where, hint)
}

type envSetting struct{ name, value, flag string }

// applyEnv sets the flags not in src from the program's variables, sorted by name.
func (l *Loader) applyEnv(fs *flag.FlagSet, environ []string, src Sources) error {
	byName, flagsOnly, ignored := map[string]string{}, map[string]string{}, map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) {
		if l.FlagsOnly[f.Name] {
			flagsOnly[l.EnvName(f.Name)] = f.Name
		} else {
			byName[l.EnvName(f.Name)] = f.Name
		}
	})
	for name := range l.Ignored {
		if _, ours := byName[l.EnvName(name)]; !ours {
			ignored[l.EnvName(name)] = true
		}
	}
	var found []envSetting
	seen := map[string]bool{}
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		// The first entry of a repeated name is the one getenv returns.
		if !strings.HasPrefix(name, l.EnvPrefix) || seen[name] {
			continue
		}
		seen[name] = true
		found = append(found, envSetting{name: name, value: value, flag: byName[name]})
	}
	sort.Slice(found, func(i, j int) bool { return found[i].name < found[j].name })
	var errs []error
	bySetting := map[string]string{}
	for _, e := range found {
		if only, ok := flagsOnly[e.name]; ok {
			errs = append(errs, fmt.Errorf("environment %s: --%s is set on the command line only", e.name, only))
			continue
		}
		if ignored[e.name] {
			continue
		}
		if e.flag == "" {
			errs = append(errs, unknown("environment "+printable(e.name), "the variables are "+l.EnvPrefix+" and a flag name in upper case, - as _; -h lists them"))
			continue
		}
		c := l.canonical(e.flag)
		if other, dup := bySetting[c]; dup {
			errs = append(errs, fmt.Errorf("environment: %s and %s both set --%s; keep one", other, e.name, c))
			continue
		}
		bySetting[c] = e.name
		if _, set := src[c]; set {
			continue
		}
		if err := fs.Set(e.flag, e.value); err != nil {
			errs = append(errs, fmt.Errorf("environment %s: %w", e.name, l.badValue(fs.Lookup(e.flag), e.value, err)))
			continue
		}
		src[c] = "environment " + e.name
	}
	return errors.Join(errs...)
}

// applyFile sets the flags not in src from the TOML file at path.
func (l *Loader) applyFile(fs *flag.FlagSet, path string, src Sources) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	var doc map[string]any
	if _, err := toml.Decode(string(b), &doc); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	entries, err := topLevel(path, doc)
	if l.Entries != nil {
		entries, err = l.Entries(path, doc)
	}
	if err != nil {
		return err
	}
	var errs []error
	bySetting := map[string]string{}
	for _, e := range entries {
		where := fmt.Sprintf("config %s: %s", path, printable(e.Key))
		f := fs.Lookup(e.Flag)
		switch {
		case e.Flag == "" || (f == nil && !l.Ignored[e.Flag]):
			hint := e.Hint
			if hint == "" {
				hint = "the keys are the flag names; -h lists them"
			}
			errs = append(errs, unknown(where, hint))
			continue
		case e.Flag == ConfigFlag:
			errs = append(errs, fmt.Errorf("%s: a settings file cannot name another (--%s is read before the file)", where, ConfigFlag))
			continue
		case l.FlagsOnly[e.Flag]:
			errs = append(errs, fmt.Errorf("%s: --%s is set on the command line only", where, e.Flag))
			continue
		case f == nil:
			continue
		}
		c := l.canonical(e.Flag)
		if other, dup := bySetting[c]; dup {
			errs = append(errs, fmt.Errorf("config %s: %q and %q both set --%s; keep one", path, other, e.Key, c))
			continue
		}
		bySetting[c] = e.Key
		if _, set := src[c]; set {
			continue
		}
		if err := l.setTOML(fs, f, e.Value); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		src[c] = where
	}
	return errors.Join(errs...)
}

// topLevel reads every top-level key of doc as a flag name, sorted.
func topLevel(_ string, doc map[string]any) ([]Entry, error) {
	keys := make([]string, 0, len(doc))
	for k := range doc {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]Entry, len(keys))
	for i, k := range keys {
		out[i] = Entry{Key: k, Flag: k, Value: doc[k]}
	}
	return out, nil
}

// kind is the TOML type a flag's value takes, and the form an error says it wants.
type kind struct {
	toml string
	want string
}

var (
	kindBool     = kind{"boolean", "true or false"}
	kindInt      = kind{"integer", "an integer"}
	kindDuration = kind{"string", "a duration such as 30s, 1m30s or 500ms"}
	kindString   = kind{"string", "a string"}
	kindList     = kind{"array", "a string or a list of strings"}
	kindAny      = kind{"", ""}
)

// Lister is a flag that holds a list: a file gives it a TOML array, the environment a
// comma-separated text.
type Lister interface{ IsList() bool }

func kindOf(f *flag.Flag) kind {
	if l, ok := f.Value.(Lister); ok && l.IsList() {
		return kindList
	}
	if g, ok := f.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case bool:
			return kindBool
		case int, int64, uint, uint64:
			return kindInt
		case time.Duration:
			return kindDuration
		case string:
			return kindString
		}
	}
	return kindAny
}

// setTOML sets f from a decoded TOML value, which must have the type the flag takes; a flag of
// its own type takes a string, an integer or a boolean as its text.
func (l *Loader) setTOML(fs *flag.FlagSet, f *flag.Flag, v any) error {
	k := kindOf(f)
	text, tomlType, err := tomlText(v)
	if err != nil {
		return err
	}
	switch {
	case k == kindList && tomlType == "string":
	case k == kindString && tomlType == "array":
	case k == kindAny && tomlType != "array":
	case k.toml != tomlType:
		return fmt.Errorf("value %s is a TOML %s; want %s", l.shown(f, tomlQuote(v)), tomlType, k.want)
	}
	if err := fs.Set(f.Name, text); err != nil {
		return l.badValue(f, text, err)
	}
	return nil
}

// tomlText is the flag text of a decoded TOML value and its TOML type.
func tomlText(v any) (string, string, error) {
	switch v := v.(type) {
	case string:
		return v, "string", nil
	case bool:
		return strconv.FormatBool(v), "boolean", nil
	case int64:
		return strconv.FormatInt(v, 10), "integer", nil
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return "", "", fmt.Errorf("want a list of strings, got a TOML %T in it", e)
			}
			parts[i] = s
		}
		return strings.Join(parts, ","), "array", nil
	}
	return "", "", fmt.Errorf("want a string, number, boolean or list of strings, got a TOML %T", v)
}

func tomlQuote(v any) string {
	if s, ok := v.(string); ok {
		return strconv.Quote(s)
	}
	return fmt.Sprint(v)
}

// shown is value as an error may repeat it.
func (l *Loader) shown(f *flag.Flag, value string) string {
	if l.Secrets[l.canonical(f.Name)] {
		return "(secret, not shown)"
	}
	return value
}

// badValue is the error for a value flag f refused: the value (unless secret) and the form the
// flag wants, or for a flag of its own type what its Set said.
func (l *Loader) badValue(f *flag.Flag, value string, err error) error {
	shown := l.shown(f, strconv.Quote(value))
	if want := kindOf(f).want; want != "" && want != kindString.want && want != kindList.want {
		return fmt.Errorf("value %s: want %s", shown, want)
	}
	return fmt.Errorf("value %s: %w", shown, err)
}

// explainParseError rewrites the flag package's error for a refused value as the environment and
// the file report theirs, and names every other command-line error as such.
func (l *Loader) explainParseError(fs *flag.FlagSet, err error) error {
	msg := err.Error()
	if strings.ContainsFunc(msg, unicode.IsControl) {
		// The flag package repeats an unknown flag's name as it was given.
		return fmt.Errorf("command line: %s", strconv.Quote(msg))
	}
	rest, ok := strings.CutPrefix(msg, "invalid ")
	rest, _ = strings.CutPrefix(rest, "boolean ")
	rest, ok2 := strings.CutPrefix(rest, "value ")
	if !ok || !ok2 {
		return fmt.Errorf("command line: %w", err)
	}
	quoted, err2 := strconv.QuotedPrefix(rest)
	if err2 != nil {
		return fmt.Errorf("command line: %w", err)
	}
	value, _ := strconv.Unquote(quoted)
	after := strings.TrimPrefix(strings.TrimPrefix(rest[len(quoted):], " for flag -"), " for -")
	name, reason, found := strings.Cut(after, ": ")
	f := fs.Lookup(name)
	if !found || f == nil {
		return fmt.Errorf("command line: %w", err)
	}
	return fmt.Errorf("flag --%s: %w", f.Name, l.badValue(f, value, errors.New(reason)))
}

// List is a flag of strings. Each value is split at commas; the first value given replaces the
// default, and a repeated flag adds to what the ones before gave.
type List struct {
	items *[]string
	set   bool
}

// NewList is a List that holds its items in p, whose value is the default.
func NewList(p *[]string) *List { return &List{items: p} }

func (l *List) String() string {
	if l == nil || l.items == nil {
		return ""
	}
	return strings.Join(*l.items, ",")
}

// Set adds the comma-separated items of v.
func (l *List) Set(v string) error {
	if !l.set {
		*l.items, l.set = nil, true
	}
	*l.items = append(*l.items, commalist.Split(v)...)
	return nil
}

// IsList makes a file give the flag a TOML array.
func (l *List) IsList() bool { return true }
