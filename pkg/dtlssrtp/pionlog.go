package dtlssrtp

import (
	"fmt"

	"github.com/pion/logging"
	"github.com/rs/zerolog"
)

// pionLogger routes pion's logs into zerolog one level down: pion reports per-packet trouble that
// this package already turns into its own, better-scoped log lines and errors.
type pionLogger struct{ log zerolog.Logger }

type pionLoggerFactory struct{ log zerolog.Logger }

func (f pionLoggerFactory) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{log: f.log.With().Str("component", "pion_"+scope).Logger()}
}

func (l pionLogger) Trace(msg string) { l.log.Trace().Msg(msg) }
func (l pionLogger) Tracef(format string, args ...any) {
	l.log.Trace().Msg(fmt.Sprintf(format, args...))
}
func (l pionLogger) Debug(msg string) { l.log.Trace().Msg(msg) }
func (l pionLogger) Debugf(format string, args ...any) {
	l.log.Trace().Msg(fmt.Sprintf(format, args...))
}
func (l pionLogger) Info(msg string) { l.log.Debug().Msg(msg) }
func (l pionLogger) Infof(format string, args ...any) {
	l.log.Debug().Msg(fmt.Sprintf(format, args...))
}
func (l pionLogger) Warn(msg string) { l.log.Debug().Msg(msg) }
func (l pionLogger) Warnf(format string, args ...any) {
	l.log.Debug().Msg(fmt.Sprintf(format, args...))
}
func (l pionLogger) Error(msg string) { l.log.Debug().Msg(msg) }
func (l pionLogger) Errorf(format string, args ...any) {
	l.log.Debug().Msg(fmt.Sprintf(format, args...))
}
