// Package logging sets up zerolog the same way for both binaries: JSON by default, a console
// writer when the output is a terminal, a level chosen by flag.
package logging

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// Options choose the output. The zero value logs JSON at info level to stderr.
type Options struct {
	// Level is a zerolog level name: trace, debug, info, warn, error. Empty means info.
	Level string
	// Format is "auto" (console on a terminal, else JSON), "json" or "console". Empty means auto.
	Format string
	// Out defaults to os.Stderr.
	Out io.Writer
}

// New returns a logger with a timestamp on every line.
func New(o Options) (zerolog.Logger, error) {
	out := o.Out
	if out == nil {
		out = os.Stderr
	}
	level := zerolog.InfoLevel
	if o.Level != "" {
		l, err := zerolog.ParseLevel(o.Level)
		if err != nil || l == zerolog.NoLevel {
			return zerolog.Nop(), fmt.Errorf("log level %q: want trace, debug, info, warn or error", o.Level)
		}
		level = l
	}
	switch o.Format {
	case "", "auto":
		if f, ok := out.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.TimeOnly}
		}
	case "json":
	case "console":
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.TimeOnly, NoColor: true}
	default:
		return zerolog.Nop(), fmt.Errorf("log format %q: want auto, json or console", o.Format)
	}
	return zerolog.New(out).Level(level).With().Timestamp().Logger(), nil
}

// MaxValue is the most bytes of an untrusted value (a KV key, an id from a request) Clip keeps.
const MaxValue = 128

// Clip shortens an untrusted value for a log line or an error: a hostile one may be kilobytes
// long. What is cut is said with the whole length.
func Clip(s string) string {
	if len(s) <= MaxValue {
		return s
	}
	return fmt.Sprintf("%s…(%d bytes)", strings.ToValidUTF8(s[:MaxValue], ""), len(s))
}
