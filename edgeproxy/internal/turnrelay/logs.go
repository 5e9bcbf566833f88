package turnrelay

import (
	"github.com/pion/logging"
	"github.com/rs/zerolog"
)

// pionLogs sends pion/turn's own logs to the edge's logger: its warnings and errors as warnings,
// the rest at trace level, where they are off unless asked for.
type pionLogs struct{ log zerolog.Logger }

func (p pionLogs) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{p.log.With().Str("component", "pion-"+scope).Logger()}
}

type pionLogger struct{ log zerolog.Logger }

func (l pionLogger) Trace(msg string)                  { l.log.Trace().Msg(msg) }
func (l pionLogger) Tracef(format string, args ...any) { l.log.Trace().Msgf(format, args...) }
func (l pionLogger) Debug(msg string)                  { l.log.Trace().Msg(msg) }
func (l pionLogger) Debugf(format string, args ...any) { l.log.Trace().Msgf(format, args...) }
func (l pionLogger) Info(msg string)                   { l.log.Trace().Msg(msg) }
func (l pionLogger) Infof(format string, args ...any)  { l.log.Trace().Msgf(format, args...) }
func (l pionLogger) Warn(msg string)                   { l.log.Warn().Msg(msg) }
func (l pionLogger) Warnf(format string, args ...any)  { l.log.Warn().Msgf(format, args...) }
func (l pionLogger) Error(msg string)                  { l.log.Warn().Msg(msg) }
func (l pionLogger) Errorf(format string, args ...any) { l.log.Warn().Msgf(format, args...) }
